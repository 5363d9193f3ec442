"""The metadata store on both of its backends: SQLite (the default) and a real PostgreSQL server
started on loopback for these tests (skipped, saying why, where PostgreSQL is not installed)."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from control_components import control_components
from control_processes import ScriptedCluster

from services.common.base_models import BaseModelSpec
from services.control.core.jobs import CreateJob
from services.control.core.usage import InferenceUsageReport
from services.control.data.uploads import TableUpload
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus
from services.control.domain.events import EventLevel, NewEvent
from services.control.domain.jobs import Job, JobStatus, new_job_id
from services.control.domain.names import qualified_name
from services.control.domain.options import RequestedOptions
from services.control.domain.usage import Grouping
from services.control.store.database import Store
from services.control.store.tables import Base, FineTuningUsageRow, ModelRow, UserRow

pytestmark = pytest.mark.integration

NOW = datetime(2025, 1, 2, tzinfo=timezone.utc)


@pytest.fixture
def store(database_url):
    s = Store.open(database_url)
    with s.transaction() as tx:
        tx.accounts.create_account("acct", NOW)
        tx.accounts.create_user("acct", "u", NOW)
    yield s
    s.close()


def new_job(store, name="a.b.m", request_id=None, created_on=NOW) -> Job:
    with store.transaction() as tx:
        user_id = tx.session.scalar(select(UserRow.id))
    job = Job(id=new_job_id(), account_id="acct", user_id=user_id, model_name=name,
              base_model="b", task_type="INSTRUCTION", training_query="select 1",
              validation_query=None, options={"k": 1}, created_on=created_on,
              request_id=request_id, output_uri="file:///x")
    return store.run(lambda tx: tx.jobs.add(job))


def test_migrations_create_exactly_the_orm_schema(store, database_url):
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert set(inspect(store.engine).get_table_names()) >= {
        "accounts", "users", "api_keys", "jobs", "models", "usage_records", "roles",
        "role_grants", "privilege_grants", "fine_tuning_usage", "job_events",
        "alembic_version"}
    Store.open(database_url).close()   # migrating again is harmless


def test_constraints(store):
    new_job(store, "a.b.c", request_id="r")
    with pytest.raises(IntegrityError):        # one active job per output name
        new_job(store, "a.b.c")
    with pytest.raises(IntegrityError):        # request ids are unique per account
        new_job(store, "a.b.d", request_id="r")
    new_job(store, "a.b.e")
    new_job(store, "a.b.f")                    # no request id: no constraint


def test_model_ids_are_never_reused_even_after_a_purge(store):
    first_job, second_job = new_job(store, "a.b.one"), new_job(store, "a.b.two")

    def add(job):
        return store.run(lambda tx: tx.models.add(
            account_id="acct", name=job.model_name, base_model="b", job_id=job.id,
            adapter_uri="file:///x", created_on=NOW, trained_tokens=1, training_loss=None,
            validation_loss=None))

    first = add(first_job)
    with store.transaction() as tx:
        tx.session.execute(delete(ModelRow).where(ModelRow.id == first.id))
    assert add(second_job).id > first.id


def test_stale_writes_are_detected(store):
    job = new_job(store)
    with store.transaction() as tx:
        mine = tx.jobs.get(job.id)

        def other(t):
            theirs = t.jobs.get(job.id)
            theirs.progress = 0.3
            t.jobs.save(theirs)
        store.run(other)
        mine.progress = 0.9
        with pytest.raises(StaleDataError):
            tx.jobs.save(mine)


def test_jobs_page_newest_first_and_events_in_order(store):
    jobs = [new_job(store, f"a.b.m{i}", created_on=NOW + timedelta(seconds=i % 2))
            for i in range(4)]
    page = store.run(lambda tx: tx.jobs.page("acct", 10))
    assert [j.created_on for j in page] == sorted((j.created_on for j in jobs), reverse=True)
    first = store.run(lambda tx: tx.jobs.page("acct", 2))
    rest = store.run(lambda tx: tx.jobs.page("acct", 10, (first[-1].created_on, first[-1].id)))
    assert [j.id for j in first + rest] == [j.id for j in page]

    store.run(lambda tx: tx.events.add(jobs[0].id, [
        NewEvent("t", f"event {i}", EventLevel.WARNING if i else EventLevel.INFO,
                 {"loss": 0.5 * i}) for i in range(5)], NOW))
    events = store.run(lambda tx: tx.events.page(jobs[0].id, 10))
    assert [e.message for e in events] == [f"event {i}" for i in range(5)]
    assert events[2].metrics == {"loss": 1.0} and events[0].level is EventLevel.INFO
    newest = store.run(lambda tx: tx.events.page(jobs[0].id, 2, events[3].id, True))
    assert [e.message for e in newest] == ["event 2", "event 1"]


# -- the service on each backend -----------------------------------------------------------------

class Words:
    """A stand-in tokenizer (a word a token): this test is about the store, not tokens."""

    chat_template = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [7] * len(text.split()) + ([1] if add_special_tokens else [])}


def load_rows(control, account_id, table, rows):
    upload = TableUpload(control.catalog.spool_dir, None, 1 << 20)
    try:
        upload.add_rows(rows)
        control.catalog.load_table(account_id, qualified_name(table), upload.finish(),
                                   replace=True)
    finally:
        upload.discard()


@pytest.fixture
def control(tmp_path, database_url):
    folder = tmp_path / "tiny-base"
    folder.mkdir()
    base = BaseModelSpec(name="tiny-base", source="path", path=folder, context_window=512,
                         prompt_tokens=384, completion_tokens=128, rows_per_epoch=100,
                         max_lora_rank=16, target_modules=("q_proj",), defaults={})
    cluster = ScriptedCluster()
    with control_components(tmp_path / "home", base, service_token="t", dispatcher=cluster,
                            tokenizers=lambda base, path: Words(),
                            database_url=database_url) as components:
        components.cluster = cluster
        yield components


def test_a_job_succeeds_once_under_concurrent_reconcilers(control):
    import json

    admin = control.store.run(lambda tx: tx.accounts.authenticate(
        control.config.bootstrap_key_file.read_text().strip()))
    load_rows(control, admin.account_id, "train",
              [{"prompt": f"q {i}", "completion": f"a {i}"} for i in range(12)])
    job = control.fine_tuning.create(admin, CreateJob(
        model="m", base_model="tiny-base", training_query="SELECT * FROM train",
        options=RequestedOptions(max_epochs=2)))
    assert (job.training_rows, job.validation_rows) == (11, 1)
    manifest = {"job_id": job.id, "trained_tokens": 99, "training_loss": 0.5,
                "validation_loss": 0.6, "epochs": 2, "steps": 4, "training_rows": 11,
                "validation_rows": 1, "truncated_rows": 0, "files": []}
    control.artifacts.write_bytes(f"{job.output_uri}/manifest.json",
                                  json.dumps(manifest).encode())
    control.cluster.jobs[job.id] = ClusterJob(ClusterJobStatus.SUCCEEDED)
    stale = control.store.run(lambda tx: tx.jobs.get(job.id))
    barrier = threading.Barrier(4)
    errors = []

    def reconcile():
        barrier.wait()
        try:
            control.reconciler.reconcile_job(stale, control.cluster.status(job.id))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=reconcile) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with control.store.transaction() as tx:
        assert tx.session.scalar(select(func.count(ModelRow.id))) == 1
        assert tx.session.scalar(select(func.count(FineTuningUsageRow.id))) == 1
    done = control.fine_tuning.get(admin, job.id)
    assert done.status is JobStatus.SUCCESS and done.trained_tokens == 99
    types = [e.type for e in control.fine_tuning.events(admin, job.id).events]
    assert types.count("job.succeeded") == 1 and types.count("model.registered") == 1


def test_usage_is_counted_once_and_aggregated_by_day(control):
    admin = control.store.run(lambda tx: tx.accounts.authenticate(
        control.config.bootstrap_key_file.read_text().strip()))
    for request_id in ("r1", "r2", "r1"):   # a retried report is counted once
        control.inference_usage.record(InferenceUsageReport(
            request_id=request_id, account_id=admin.account_id, user_id=admin.user_id,
            model="tiny-base", base_model="tiny-base", prompt_tokens=10, completion_tokens=5))
    groups = control.usage.aggregate_inference(admin, [Grouping.DAY, Grouping.MODEL])
    assert [(g.model, g.requests, g.prompt_tokens, g.completion_tokens) for g in groups] == [
        ("tiny-base", 2, 20, 10)]
    assert len(groups[0].day) == 10   # YYYY-MM-DD on both backends
