"""Initial schema: accounts, users, api keys, jobs, models, usage records.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE_JOB = "status IN ('PENDING', 'IN_PROGRESS')"
LIVE_MODEL = "deleted_on IS NULL"


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_on", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "name", name="uq_users_account_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("revoked_on", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("model_name", sa.String(800), nullable=False),
        sa.Column("task_type", sa.String(32), nullable=False),
        sa.Column("training_query", sa.Text(), nullable=False),
        sa.Column("validation_query", sa.Text(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("spec_uri", sa.Text(), nullable=True),
        sa.Column("output_uri", sa.Text(), nullable=True),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("started_on", sa.DateTime(), nullable=True),
        sa.Column("finished_on", sa.DateTime(), nullable=True),
        sa.Column("updated_on", sa.DateTime(), nullable=True),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=False),
        sa.Column("training_loss", sa.Float(), nullable=True),
        sa.Column("validation_loss", sa.Float(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("total_steps", sa.BigInteger(), nullable=False),
        sa.Column("training_rows", sa.BigInteger(), nullable=False),
        sa.Column("validation_rows", sa.BigInteger(), nullable=False),
        sa.Column("truncated_rows", sa.BigInteger(), nullable=False),
        sa.Column("submit_attempts", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("account_id", "request_id", name="uq_jobs_account_request"),
    )
    op.create_index("ix_jobs_account_created", "jobs", ["account_id", "created_on"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("uq_jobs_active_model_name", "jobs", ["account_id", "model_name"],
                    unique=True, sqlite_where=sa.text(ACTIVE_JOB),
                    postgresql_where=sa.text(ACTIVE_JOB))
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("name", sa.String(800), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=False,
                  unique=True),
        sa.Column("adapter_uri", sa.Text(), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=False),
        sa.Column("training_loss", sa.Float(), nullable=True),
        sa.Column("validation_loss", sa.Float(), nullable=True),
        sa.Column("deleted_on", sa.DateTime(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("uq_models_live_name", "models", ["account_id", "name"], unique=True,
                    sqlite_where=sa.text(LIVE_MODEL), postgresql_where=sa.text(LIVE_MODEL))
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(800), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "request_id", name="uq_usage_account_request"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_usage_account_created", "usage_records", ["account_id", "created_on"])


def downgrade() -> None:
    op.drop_table("usage_records")
    op.drop_table("models")
    op.drop_table("jobs")
    op.drop_table("api_keys")
    op.drop_table("users")
    op.drop_table("accounts")
