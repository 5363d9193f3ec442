"""Imported models: a model need not come from a job (job_id NULL); its lineage (the URI it was
imported from, each file's sha256) and the import's request id.

Revision ID: 0005
Revises: 0004
Create Date: 2025-05-01
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LIVE_MODEL = "deleted_on IS NULL"


@contextlib.contextmanager
def _copying_models() -> Iterator[None]:
    """Around a batch alteration of `models`. SQLite cannot change a column in place, so the
    table is copied: the copy keeps AUTOINCREMENT (table_kwargs) and the sequence is restored
    after it, so the id of a purged row is still never handed out again (adapter ids are never
    reused); the partial index is not reflected with its WHERE, so it is dropped and made
    again. PostgreSQL alters in place."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        yield
        return
    next_id = bind.execute(sa.text(
        "SELECT seq FROM sqlite_sequence WHERE name = 'models'")).scalar()
    op.drop_index("uq_models_live_name", "models")
    yield
    op.create_index("uq_models_live_name", "models", ["account_id", "name"], unique=True,
                    sqlite_where=sa.text(LIVE_MODEL))
    if next_id is not None:
        bind.execute(sa.text("UPDATE sqlite_sequence SET seq = max(seq, :seq) "
                             "WHERE name = 'models'"), {"seq": next_id})
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) SELECT 'models', :seq "
                             "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence "
                             "WHERE name = 'models')"), {"seq": next_id})


def upgrade() -> None:
    with _copying_models(), op.batch_alter_table(
            "models", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("job_id", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("imported_from", sa.Text(), nullable=True))
        batch.add_column(sa.Column("file_sha256", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("request_id", sa.String(255), nullable=True))
        batch.create_unique_constraint("uq_models_account_request", ["account_id", "request_id"])


def downgrade() -> None:
    # Imported models have no job: they cannot survive a schema that requires one.
    op.execute("DELETE FROM models WHERE job_id IS NULL")
    with _copying_models(), op.batch_alter_table(
            "models", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("uq_models_account_request", type_="unique")
        batch.drop_column("request_id")
        batch.drop_column("file_sha256")
        batch.drop_column("imported_from")
        batch.alter_column("job_id", existing_type=sa.String(64), nullable=False)
