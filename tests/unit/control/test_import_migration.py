"""Migration 0005 on a SQLite database written by 0004: the models table is copied to let job_id
be NULL, and the copy keeps what mattered about the original: rows, AUTOINCREMENT past a purged
id, the partial unique index on live names, and the schema the ORM expects."""

from datetime import datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from test_access_migration import migrate_to

from services.control.store.database import Store, create_db_engine
from services.control.store.tables import Base

NOW = datetime(2025, 1, 1)


def test_upgrade_from_0004_keeps_models_and_their_ids(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_db_engine(url)
    migrate_to(engine, "0004")
    with engine.begin() as c:
        c.execute(text("INSERT INTO accounts VALUES ('acct', :now)"), {"now": NOW})
        c.execute(text("INSERT INTO users (id, account_id, name, created_on) "
                       "VALUES ('u1', 'acct', 'u1', :now)"), {"now": NOW})
        for job in ("ft_1", "ft_2"):
            c.execute(text(
                "INSERT INTO jobs (id, account_id, user_id, status, progress, base_model,"
                " model_name, task_type, training_query, options, created_on, trained_tokens,"
                " epoch, step, total_steps, training_rows, validation_rows, truncated_rows,"
                " submit_attempts, version) VALUES (:id, 'acct', 'u1', 'SUCCESS', 1, 'b', :m,"
                " 'INSTRUCTION', 'select 1', '{}', :now, 0, 0, 0, 0, 0, 0, 0, 0, 1)"),
                {"id": job, "m": f"public.public.{job}", "now": NOW})
        for model_id, job in ((1, "ft_1"), (2, "ft_2")):
            c.execute(text(
                "INSERT INTO models (id, account_id, name, version, base_model, job_id,"
                " adapter_uri, created_on, trained_tokens) VALUES (:id, 'acct', :m, 1, 'b',"
                " :job, 'file:///x', :now, 5)"),
                {"id": model_id, "m": f"public.public.{job}", "job": job, "now": NOW})
        c.execute(text("DELETE FROM models WHERE id = 2"))   # a purged candidate's id
    engine.dispose()

    store = Store.open(url)   # migrates to head
    try:
        with store.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        with store.transaction() as tx:
            old = tx.models.get("acct", "public.public.ft_1")
            assert (old.id, old.job_id, old.trained_tokens, old.imported_from) == (
                1, "ft_1", 5, "")
            imported = tx.models.add(
                account_id="acct", name="public.public.imported", base_model="b", job_id="",
                adapter_uri="file:///y", created_on=NOW, trained_tokens=0, training_loss=None,
                validation_loss=None, imported_from="upload",
                file_sha256={"adapter_config.json": "ab" * 32}, request_id="r1")
            assert imported.id == 3            # never 2, the purged id
            assert tx.models.by_request_id("acct", "r1").file_sha256 == {
                "adapter_config.json": "ab" * 32}
        with pytest.raises(IntegrityError):    # the live-name index survived the copy
            with store.transaction() as tx:
                tx.models.add(account_id="acct", name="public.public.ft_1", base_model="b",
                              job_id="", adapter_uri="file:///z", created_on=NOW,
                              trained_tokens=0, training_loss=None, validation_loss=None,
                              imported_from="upload")
    finally:
        store.close()
