"""Model evaluations; a model's state (a job's candidate is EVALUATING until its evaluations
decide); a job's evaluation options.

Revision ID: 0004
Revises: 0003
Create Date: 2025-04-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not a batch (which on SQLite copies the table and would drop the
    # models table's AUTOINCREMENT: adapter ids must never be reused).
    op.add_column("models", sa.Column("state", sa.String(16), nullable=False,
                                      server_default=sa.text("'READY'")))
    op.add_column("jobs", sa.Column("evaluation", sa.JSON(), nullable=True))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("model", sa.String(800), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.BigInteger(), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("generation", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("rows_done", sa.BigInteger(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("started_on", sa.DateTime(), nullable=True),
        sa.Column("finished_on", sa.DateTime(), nullable=True),
        sa.Column("updated_on", sa.DateTime(), nullable=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("data_uri", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("account_id", "request_id", name="uq_evaluations_account_request"),
    )
    op.create_index("ix_evaluations_account_created", "evaluations",
                    ["account_id", "created_on"])
    op.create_index("ix_evaluations_model", "evaluations", ["account_id", "model", "created_on"])
    op.create_index("ix_evaluations_job", "evaluations", ["job_id"])
    op.create_index("ix_evaluations_status", "evaluations", ["status"])


def downgrade() -> None:
    for name in ("ix_evaluations_status", "ix_evaluations_job", "ix_evaluations_model",
                 "ix_evaluations_account_created"):
        op.drop_index(name, "evaluations")
    op.drop_table("evaluations")
    op.drop_column("jobs", "evaluation")   # SQLite 3.35+ drops a column in place
    op.drop_column("models", "state")
