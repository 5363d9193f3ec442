"""Alembic environment: runs on the connection the service hands over, or on `-x url=...`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from services.control.store.tables import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    # Batch mode lets later migrations ALTER tables on SQLite (copy-and-move).
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or \
        context.config.get_main_option("sqlalchemy.url")
    assert url, "give -x url=... or sqlalchemy.url"
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
