"""The metadata store: Alembic creates exactly the ORM schema; ids and locks behave."""

from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, inspect
from sqlalchemy.exc import IntegrityError

from services.control.domain.jobs import Job, new_job_id
from services.control.store.database import Store
from services.control.store.tables import Base, ModelRow

NOW = datetime(2025, 1, 2, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'meta.db'}")
    with s.transaction() as tx:
        tx.accounts.create_account("acct", NOW)
        tx.accounts.create_user("acct", "u", NOW)
    yield s
    s.close()


def user_id(store):
    from services.control.store.tables import UserRow
    with store.transaction() as tx:
        return tx.session.query(UserRow).one().id


def new_job(store, name="PUBLIC.PUBLIC.M", request_id=None) -> Job:
    job = Job(id=new_job_id(), account_id="acct", user_id=user_id(store), model_name=name,
              base_model="b", task_type="INSTRUCTION", training_query="select 1",
              validation_query=None, options={"k": 1}, created_on=NOW, request_id=request_id,
              output_uri="file:///x")
    return store.run(lambda tx: tx.jobs.add(job))


def test_migrations_match_the_orm(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert set(inspect(store.engine).get_table_names()) >= {
        "accounts", "users", "api_keys", "jobs", "models", "usage_records", "alembic_version"}


def test_migrating_twice_is_harmless(tmp_path):
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    Store.open(url).close()
    Store.open(url).close()


def test_model_ids_are_never_reused_even_after_a_purge(store):
    job_a, job_b = new_job(store, "A.B.ONE"), new_job(store, "A.B.TWO")

    def add(job):
        return store.run(lambda tx: tx.models.add(
            account_id="acct", name=job.model_name, base_model="b", job_id=job.id,
            adapter_uri="file:///x", created_on=NOW, trained_tokens=1, training_loss=None,
            validation_loss=None))

    first = add(job_a)
    with store.transaction() as tx:  # even a hard delete of the newest row
        tx.session.execute(delete(ModelRow).where(ModelRow.id == first.id))
    assert add(job_b).id > first.id


def test_stale_writes_are_detected(store):
    job = new_job(store)
    with store.transaction() as tx:
        mine = tx.jobs.get(job.id)
        store.run(lambda other: other.jobs.save(_with_progress(other.jobs.get(job.id), 0.3)))
        mine.progress = 0.9
        from sqlalchemy.orm.exc import StaleDataError
        with pytest.raises(StaleDataError):
            tx.jobs.save(mine)


def _with_progress(job, value):
    job.progress = value
    return job


def test_one_active_job_per_output_name(store):
    new_job(store, "A.B.C")
    with pytest.raises(IntegrityError):
        new_job(store, "A.B.C")


def test_request_ids_are_unique_per_account(store):
    new_job(store, "A.B.C", request_id="r")
    with pytest.raises(IntegrityError):
        new_job(store, "A.B.D", request_id="r")
    new_job(store, "A.B.E")  # no request id: no constraint
    new_job(store, "A.B.F")


# -- a locked or unreachable database ---------------------------------------------------------

def _locking(path):
    """Another process's write transaction on the database file (BEGIN EXCLUSIVE)."""
    import sqlite3
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")
    return other


def _write(tx):
    from sqlalchemy import text
    tx.session.execute(text("CREATE TABLE IF NOT EXISTS scratch (x INTEGER)"))
    tx.session.execute(text("INSERT INTO scratch VALUES (1)"))
    return tx.session.execute(text("SELECT count(*) FROM scratch")).scalar()


def test_a_database_locked_past_the_bound_is_unavailable_and_nothing_is_written(tmp_path):
    from services.common.errors import Unavailable
    path = tmp_path / "meta.db"
    store = Store.open(f"sqlite:///{path}", busy_timeout_s=0.1,
                       unavailable_backoff_s=(0.05, 0.05))
    other = _locking(path)
    try:
        with pytest.raises(Unavailable, match="database is locked.*retry later"):
            store.run(_write)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.run(_write) == 1   # the refused write left nothing behind; it runs now
    store.close()


def test_a_briefly_locked_database_is_waited_for(tmp_path):
    import threading
    path = tmp_path / "meta.db"
    store = Store.open(f"sqlite:///{path}", busy_timeout_s=0.1,
                       unavailable_backoff_s=(0.2, 0.2, 0.2, 0.2))
    other = _locking(path)

    def release():
        other.execute("ROLLBACK")
        other.close()
    timer = threading.Timer(0.3, release)
    timer.start()
    try:
        assert store.run(_write) == 1
    finally:
        timer.join()
        store.close()


def test_a_bad_statement_is_not_retried(tmp_path):
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError
    store = Store.open(f"sqlite:///{tmp_path / 'meta.db'}", unavailable_backoff_s=(30.0,))
    calls = []

    def bad(tx):
        calls.append(1)
        tx.session.execute(text("SELECT * FROM no_such_table"))
    with pytest.raises(OperationalError, match="no such table"):
        store.run(bad)
    assert calls == [1]
    store.close()
