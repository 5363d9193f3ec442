"""EstimateFineTuningJob (a dry run of CREATE) and each job's lineage: the snapshots it trains on,
their content hashes and token counts, shown by DESCRIBE from CREATE on."""

import hashlib

import pytest
from control_testbed import acting_as, files_under, load_rows, new_user

from finetune.control.v1 import jobs_pb2
from services.common.errors import AlreadyExists, InvalidArgument, PermissionDenied
from services.control.api.jobs import FineTuningServicer
from services.control.store.tables import JobRow

ROWS = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)] + [
    {"prompt": "why " * 500, "completion": "because"}]          # 500 words > 384 prompt tokens


@pytest.fixture
def servicer(control, admin):
    load_rows(control, admin.account_id, "train", ROWS)
    return FineTuningServicer(control.fine_tuning, control.events)


def two_epochs(**fields):
    return jobs_pb2.FineTuningOptions(max_epochs=2, **fields)


async def test_estimate_counts_rows_tokens_truncation_and_credits(control, servicer, admin):
    def files():  # the metadata database's own journal files come and go
        return {p for p in files_under(control.config.home)
                if not p.name.endswith(("-wal", "-shm", "-journal"))}

    before = files()
    with acting_as(admin):
        estimate = await servicer.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
            base_model="tiny-base", training_query="SELECT * FROM train",
            options=two_epochs()), None)
    assert files() == before
    assert not list((control.config.home / "data" / ".spool").glob("estimate-*"))
    with control.store.transaction() as tx:
        assert tx.session.query(JobRow).count() == 0
    # 11 rows: one held out, 10 trained; prompts BOS + 2 words, completions 2 words + EOS
    assert estimate.validation_source == jobs_pb2.HOLDOUT
    assert estimate.training.rows + estimate.validation.rows == 11
    assert estimate.validation.rows == 1 and estimate.max_rows == 15 and estimate.epochs == 2
    assert estimate.training.uri == "" and len(estimate.training.sha256) == 64
    both = [estimate.training, estimate.validation]
    assert sum(s.truncated_rows for s in both) == 1
    assert sum(s.prompt_tokens for s in both) == 10 * 3 + 384
    assert sum(s.completion_tokens for s in both) == 11 * 3 - 1   # "because" + EOS: 2
    assert estimate.tokens_per_epoch == estimate.training.prompt_tokens + \
        estimate.training.completion_tokens
    assert estimate.trained_tokens == 2 * estimate.tokens_per_epoch
    price = control.fine_tuning._prices.price("tiny-base").training
    assert estimate.credits_per_million_tokens == price
    assert estimate.credits == pytest.approx(price * estimate.trained_tokens / 1e6)
    assert estimate.options.max_epochs == 2 and estimate.options.batch_size == 4
    assert any("will be truncated" in note for note in estimate.notes)
    assert any("held out 1" in note for note in estimate.notes)


async def test_estimate_refuses_what_create_refuses(control, servicer, admin):
    with acting_as(admin):
        with pytest.raises(InvalidArgument, match="returned 11 rows, more than the limit of 10"):
            await servicer.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
                base_model="tiny-base", training_query="SELECT * FROM train"), None)
        with pytest.raises(InvalidArgument, match="must return column messages"):
            await servicer.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
                base_model="tiny-base", training_query="SELECT * FROM train",
                options=two_epochs(task_type=jobs_pb2.CHAT)), None)
        with pytest.raises(InvalidArgument, match="only SELECT"):
            await servicer.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
                base_model="tiny-base", training_query="DELETE FROM train"), None)
        await servicer.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="taken", base_model="tiny-base", training_query="SELECT * FROM train",
            options=two_epochs()), None)
        with pytest.raises(AlreadyExists):   # a model name, when given, must be free
            await servicer.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
                model="taken", base_model="tiny-base", training_query="SELECT * FROM train",
                options=two_epochs()), None)
    nobody, _ = new_user(control, admin.account_id, "nobody", ("PUBLIC",))
    with acting_as(nobody), pytest.raises(PermissionDenied, match="FINETUNE_USER"):
        await servicer.EstimateFineTuningJob(jobs_pb2.EstimateFineTuningJobRequest(
            base_model="tiny-base", training_query="SELECT * FROM train"), None)


async def test_describe_shows_lineage_and_truncation_from_create(control, servicer, admin):
    with acting_as(admin):
        job = await servicer.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="m", base_model="tiny-base", training_query="SELECT * FROM train",
            options=two_epochs()), None)
        described = await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id),
                                                     None)
    assert described.truncated_rows == 1
    assert described.validation_source == jobs_pb2.HOLDOUT
    training, validation = described.training_snapshot, described.validation_snapshot
    assert training.uri.endswith(f"/jobs/{job.id}/data/training.jsonl")
    assert validation.uri.endswith(f"/jobs/{job.id}/data/validation.jsonl")
    for snapshot in (training, validation):
        data = control.artifacts.read_bytes(snapshot.uri)
        assert hashlib.sha256(data).hexdigest() == snapshot.sha256
        assert len(data.splitlines()) == snapshot.rows
    assert (training.rows, validation.rows) == (described.training_rows,
                                                described.validation_rows) == (10, 1)
    assert training.truncated_rows + validation.truncated_rows == 1
    assert described.estimated_trained_tokens == 2 * (training.prompt_tokens +
                                                      training.completion_tokens)
    # the scratch copy of the query result is gone; the spec names the held-out file
    assert sorted(p.name for p in (control.config.home / "artifacts" / "jobs" / job.id /
                                   "data").iterdir()) == ["training.jsonl", "validation.jsonl"]


async def test_the_holdout_is_the_same_for_the_same_seed(control, servicer, admin):
    held_out = []
    for name, seed in (("a", 5), ("b", 5)):
        with acting_as(admin):
            job = await servicer.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
                model=name, base_model="tiny-base",
                training_query="SELECT * FROM train ORDER BY prompt",
                options=two_epochs(seed=seed)), None)
        held_out.append(control.artifacts.read_bytes(job.validation_snapshot.uri))
    assert held_out[0] == held_out[1] and held_out[0]


async def test_the_trainers_truncation_count_is_final(control, servicer, admin, dispatcher):
    from control_testbed import succeed
    with acting_as(admin):
        job = await servicer.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="m", base_model="tiny-base", training_query="SELECT * FROM train",
            options=two_epochs()), None)
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id), truncated_rows=2)
    assert control.fine_tuning.get(admin, job.id).truncated_rows == 2


async def test_an_unknown_task_type_is_invalid(servicer, admin):
    with acting_as(admin), pytest.raises(InvalidArgument, match="task_type 7 is not one of"):
        await servicer.CreateFineTuningJob(jobs_pb2.CreateFineTuningJobRequest(
            model="m", base_model="tiny-base", training_query="SELECT * FROM train",
            options=two_epochs(task_type=7)), None)
