"""Models shared across accounts: USAGE on a model granted to another account (all its roles)
or to one role of it, and the owner account of the model on each usage row, so the owner can
see its models' usage by other accounts.

Revision ID: 0007
Revises: 0006
Create Date: 2025-06-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_shares",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("model_name", sa.String(800), nullable=False),
        sa.Column("privilege", sa.String(32), nullable=False),
        sa.Column("grantee_account_id", sa.String(64), sa.ForeignKey("accounts.id"),
                  nullable=False),
        # "": every role of the grantee account; else one role's name (upper case).
        sa.Column("grantee_role", sa.String(255), nullable=False, server_default=""),
        sa.Column("granted_by", sa.String(255), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("account_id", "model_name", "privilege", "grantee_account_id",
                            "grantee_role", name="uq_model_shares"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_model_shares_grantee", "model_shares", ["grantee_account_id"])
    # The account owning the model when it is not the caller's (a shared model), else NULL.
    op.add_column("usage_records", sa.Column("model_account_id", sa.String(64), nullable=True))
    op.create_index("ix_usage_model_account", "usage_records",
                    ["model_account_id", "model", "created_on"])


def downgrade() -> None:
    op.drop_index("ix_usage_model_account", "usage_records")
    with op.batch_alter_table("usage_records",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("model_account_id")
    op.drop_index("ix_model_shares_grantee", "model_shares")
    op.drop_table("model_shares")
