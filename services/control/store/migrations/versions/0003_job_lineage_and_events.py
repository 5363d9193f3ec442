"""Job lineage (snapshot URIs, content hashes, token counts, validation source) and the job
event log.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COUNTS = ("training_prompt_tokens", "training_completion_tokens", "training_truncated_rows",
           "validation_prompt_tokens", "validation_completion_tokens",
           "validation_truncated_rows", "estimated_trained_tokens")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("training_data_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("training_data_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("validation_data_uri", sa.Text(), nullable=True))
        batch.add_column(sa.Column("validation_data_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("validation_source", sa.String(16), nullable=True))
        for name in _COUNTS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False,
                                       server_default=sa.text("0")))
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("created_on", sa.DateTime(), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_job", "job_events")
    op.drop_table("job_events")
    with op.batch_alter_table("jobs") as batch:
        for name in ("training_data_uri", "training_data_sha256", "validation_data_uri",
                     "validation_data_sha256", "validation_source", *_COUNTS):
            batch.drop_column(name)
