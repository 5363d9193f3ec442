"""Batch generations (GenerateText, ML.GENERATE_TEXT).

Revision ID: 0006
Revises: 0005
Create Date: 2025-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("request_id", sa.String(255), nullable=True),
        sa.Column("model", sa.String(800), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.BigInteger(), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("into", sa.String(800), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("rows_done", sa.BigInteger(), nullable=False),
        sa.Column("rows_failed", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("started_on", sa.DateTime(), nullable=True),
        sa.Column("finished_on", sa.DateTime(), nullable=True),
        sa.Column("updated_on", sa.DateTime(), nullable=True),
        sa.Column("data_uri", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.UniqueConstraint("account_id", "request_id", name="uq_generations_account_request"),
    )
    op.create_index("ix_generations_account_created", "generations",
                    ["account_id", "created_on"])
    op.create_index("ix_generations_status", "generations", ["status"])


def downgrade() -> None:
    op.drop_index("ix_generations_status", "generations")
    op.drop_index("ix_generations_account_created", "generations")
    op.drop_table("generations")
