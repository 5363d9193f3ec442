"""Hyperparameter sweeps (CreateSweep): one row per sweep, its trials a JSON list.

Revision ID: 0008
Revises: 0007
Create Date: 2025-06-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("user_name", sa.String(255), nullable=False),
        sa.Column("owner_role_id", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("model", sa.String(800), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("training_query", sa.Text(), nullable=False),
        sa.Column("validation_query", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("evaluation", sa.JSON(), nullable=True),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("budget", sa.JSON(), nullable=False),
        sa.Column("objective", sa.String(64), nullable=False),
        sa.Column("minimize", sa.Boolean(), nullable=False),
        sa.Column("delete_candidates", sa.Boolean(), nullable=False),
        sa.Column("trials", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("best_trial", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("estimated_trained_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("finished_on", sa.DateTime(), nullable=True),
        sa.Column("updated_on", sa.DateTime(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("account_id", "request_id", name="uq_sweeps_account_request"),
    )
    op.create_index("ix_sweeps_account_created", "sweeps", ["account_id", "created_on"])
    op.create_index("ix_sweeps_settled", "sweeps", ["settled"])


def downgrade() -> None:
    op.drop_index("ix_sweeps_settled", "sweeps")
    op.drop_index("ix_sweeps_account_created", "sweeps")
    op.drop_table("sweeps")
