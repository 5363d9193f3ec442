"""The evaluations table and the models' state on both store backends (SQLite and PostgreSQL,
as test_store_backends.py): the migration matches the ORM, rows round-trip, optimistic locking
holds, request ids are unique per account, and a purged candidate's id is never reused."""

from datetime import datetime, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from services.control.domain.evaluations import (Evaluation, EvaluationStatus, EvaluationTask,
                                                 LabelMetric, RequestedGeneration,
                                                 new_evaluation_id, resolve_generation)
from services.control.domain.jobs import Job, new_job_id
from services.control.domain.models import ModelState
from services.control.store.database import Store
from services.control.store.tables import UserRow

pytestmark = pytest.mark.integration

NOW = datetime(2025, 4, 1, tzinfo=timezone.utc)


@pytest.fixture
def store(database_url):
    s = Store.open(database_url)
    with s.transaction() as tx:
        tx.accounts.create_account("acct", NOW)
        tx.accounts.create_user("acct", "u", NOW)
    yield s
    s.close()


def evaluation_row(user, request_id=None, created_on=NOW, model="tiny-base") -> Evaluation:
    return Evaluation(id=new_evaluation_id(), account_id="acct", user_id=user, model=model,
                      base_model="tiny-base", task=EvaluationTask.CLASSIFICATION, query="q",
                      generation=resolve_generation(RequestedGeneration(concurrency=3),
                                                    EvaluationTask.CLASSIFICATION),
                      created_on=created_on, rows=2, request_id=request_id,
                      data_uri="file:///data.jsonl")


def user_id(store):
    with store.transaction() as tx:
        return tx.session.scalar(select(UserRow.id))


def test_evaluations_round_trip_and_lock(store):
    e = evaluation_row(user_id(store), request_id="r1")
    store.run(lambda tx: tx.evaluations.add(e))
    with store.transaction() as tx:
        mine = tx.evaluations.get(e.id)
        assert mine.status is EvaluationStatus.PENDING and mine.generation == e.generation
        store.run(lambda other: other.evaluations.save(_started(other.evaluations.get(e.id))))
        mine.cancel(NOW)
        with pytest.raises(StaleDataError):
            tx.evaluations.save(mine)

    def finish(tx):
        current = tx.evaluations.get(e.id)
        current.report(2, 10, 4, NOW)
        current.succeed({"macro_f1": 0.5, "accuracy": 0.75},
                        [LabelMetric("b", 1.0, 0.5, 2 / 3, 2), LabelMetric("a", 0.5, 1, 2 / 3, 1)],
                        NOW)
        return tx.evaluations.save(current)
    done = store.run(finish)
    again = store.run(lambda tx: tx.evaluations.get(e.id))
    assert again.metrics == {"macro_f1": 0.5, "accuracy": 0.75}
    assert [m.label for m in again.labels] == ["a", "b"] and again.labels[1].support == 2
    assert again.finished_on == NOW and again.version == done.version
    assert store.run(lambda tx: tx.evaluations.by_request_id("acct", "r1")).id == e.id
    with pytest.raises(IntegrityError):
        store.run(lambda tx: tx.evaluations.add(evaluation_row(user_id(store),
                                                               request_id="r1")))


def _started(e):
    e.start(NOW)
    return e


def test_queue_and_pages(store):
    uid = user_id(store)
    rows = [evaluation_row(uid, created_on=NOW.replace(day=d), model=m)
            for d, m in ((1, "x"), (2, "y"), (3, "x"))]
    for e in rows:
        store.run(lambda tx, e=e: tx.evaluations.add(e))
    page = store.run(lambda tx: tx.evaluations.page("acct", 10))
    assert [e.id for e in page] == [rows[2].id, rows[1].id, rows[0].id]
    assert [e.id for e in store.run(lambda tx: tx.evaluations.page("acct", 10, "x"))] == \
        [rows[2].id, rows[0].id]
    after = (rows[2].created_on, rows[2].id)
    assert [e.id for e in store.run(lambda tx: tx.evaluations.page("acct", 1, None, after))] \
        == [rows[1].id]
    queued = store.run(lambda tx: tx.evaluations.with_status([EvaluationStatus.PENDING]))
    assert [e.id for e in queued] == [e.id for e in rows]


def test_a_purged_candidate_leaves_its_id_unused(store):
    uid = user_id(store)

    def job(name):
        j = Job(id=new_job_id(), account_id="acct", user_id=uid, model_name=name,
                base_model="b", task_type="INSTRUCTION", training_query="q",
                validation_query=None, options={}, created_on=NOW, output_uri="file:///x")
        return store.run(lambda tx: tx.jobs.add(j))

    def add(j, state):
        return store.run(lambda tx: tx.models.add(
            account_id="acct", name="a.b.m", base_model="b", job_id=j.id,
            adapter_uri="file:///x", created_on=NOW, trained_tokens=1, training_loss=None,
            validation_loss=None, state=state))

    first = add(job("a.b.m"), ModelState.EVALUATING)
    assert store.run(lambda tx: tx.models.get("acct", "a.b.m")).state == ModelState.EVALUATING
    assert store.run(lambda tx: tx.models.page("acct", 10)) == []   # not listed
    store.run(lambda tx: tx.models.purge(first.id))
    second = add(job("a.b.retry"), ModelState.EVALUATING)
    assert second.id > first.id and second.version == 1
    store.run(lambda tx: tx.models.set_state(second.id, ModelState.READY))
    assert [m.id for m in store.run(lambda tx: tx.models.page("acct", 10))] == [second.id]
