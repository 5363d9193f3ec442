"""FineTuningService through its servicer, on a real SQLite file, real DuckDB files, a real
artifact folder and a fake cluster."""

import asyncio
import json

import pytest
from control_testbed import (SERVICE_TOKEN, acting_as, files_under, instruction_rows,
                             load_rows, new_account, succeed)

from finetune.control.v1 import internal_pb2, jobs_pb2
from services.common.errors import (AlreadyExists, FailedPrecondition, InvalidArgument,
                                    NotFound)
from services.common.job_spec import parse_spec
from services.control.api.internal import JobReportingServicer
from services.control.api.jobs import FineTuningServicer
from services.control.dispatch.protocol import ClusterUnavailable


@pytest.fixture
def servicer(control):
    return FineTuningServicer(control.fine_tuning, control.events,
                              watch_poll_s=0.2)


@pytest.fixture
def reporting(control):
    return JobReportingServicer(control.fine_tuning)


@pytest.fixture
def data(control, admin):
    load_rows(control, admin.account_id, "train", instruction_rows(6))
    load_rows(control, admin.account_id, "holdout", instruction_rows(2))
    return control


def request(**overrides) -> jobs_pb2.CreateFineTuningJobRequest:
    fields = dict(model="my_model", base_model="tiny-base",
                  training_query="SELECT prompt, completion FROM train")
    fields.update(overrides)
    return jobs_pb2.CreateFineTuningJobRequest(**fields)


async def create(servicer, admin, **overrides) -> jobs_pb2.FineTuningJob:
    with acting_as(admin):
        return await servicer.CreateFineTuningJob(request(**overrides), None)


def read_jsonl(control, uri):
    return [json.loads(line) for line in control.artifacts.read_bytes(uri).splitlines()]


async def test_create_snapshots_writes_spec_and_submits(data, servicer, admin, dispatcher,
                                                        tiny_base):
    job = await create(servicer, admin, validation_query="SELECT * FROM holdout",
                       options=jobs_pb2.FineTuningOptions(max_epochs=2, lora_rank=4))
    assert job.id.startswith("ft_") and job.status == jobs_pb2.PENDING
    assert job.model == "public.public.my_model" and job.base_model == "tiny-base"
    assert (job.training_rows, job.validation_rows) == (6, 2)
    assert job.options.max_epochs == 2 and job.options.lora_rank == 4
    assert job.options.batch_size == 4  # the base model's default
    assert job.options.task_type == jobs_pb2.INSTRUCTION
    assert job.created_on.seconds > 0 and not job.HasField("started_on")

    root = data.artifacts.root
    spec_uri = f"{root}/jobs/{job.id}/spec.json"
    spec = json.loads(data.artifacts.read_bytes(spec_uri))
    assert spec == {
        "job_id": job.id,
        "task_type": "INSTRUCTION",
        "base_model": {"name": "tiny-base", "path": str(tiny_base.path), "context_window": 512,
                       "prompt_tokens": 384, "completion_tokens": 128,
                       "source": tiny_base.source},
        "training_data_uri": f"{root}/jobs/{job.id}/data/training.jsonl",
        "validation_data_uri": f"{root}/jobs/{job.id}/data/validation.jsonl",
        "output_uri": f"{root}/jobs/{job.id}/output",
        "checkpoint_uri": f"{root}/jobs/{job.id}/checkpoints",
        "artifact_root": root,
        "from_adapter_uri": None,
        "options": {"max_epochs": 2, "learning_rate": 0.001, "batch_size": 4, "lora_rank": 4,
                    "lora_alpha": 16, "lora_dropout": 0.05,
                    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "seed": 42,
                    "num_workers": 2, "checkpoint_every_steps": 0,
                    "early_stopping_patience": 0, "neftune_noise_alpha": 0.0},
        "control_address": "127.0.0.1:50999",
        "spec_version": 1,
    }
    assert parse_spec(spec).to_dict() == spec   # what the trainer reads back
    training = read_jsonl(data, spec["training_data_uri"])
    assert sorted(training, key=lambda r: r["prompt"]) == [
        {"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(6)]
    assert len(read_jsonl(data, spec["validation_data_uri"])) == 2
    # The job's environment: the service token and the trainer's restart budget (default 2).
    assert dispatcher.submitted == [(job.id, spec_uri, {"FINETUNE_SERVICE_TOKEN": SERVICE_TOKEN,
                                                        "FINETUNE_TRAINER_MAX_FAILURES": "2"})]


async def test_the_completion_column_may_be_named_label(data, servicer, admin):
    """BigQuery's supervised tuning names the target `label`; `completion` wins where both are."""
    job = await create(servicer, admin,
                       training_query="SELECT prompt, completion AS label FROM train")
    both = await create(servicer, admin, model="both", training_query=(
        "SELECT prompt, completion, 'not this' AS label FROM train"))
    root = data.artifacts.root
    for created in (job, both):
        rows = read_jsonl(data, f"{root}/jobs/{created.id}/data/training.jsonl")
        assert rows and all(r["completion"].startswith("answer ") for r in rows), rows


async def test_without_validation_the_spec_says_null(data, servicer, admin):
    job = await create(servicer, admin)
    spec = json.loads(data.artifacts.read_bytes(f"{data.artifacts.root}/jobs/{job.id}/spec.json"))
    assert spec["validation_data_uri"] is None and job.validation_rows == 0


@pytest.mark.parametrize("query,column", [
    ("SELECT prompt FROM train", "completion (or label)"),
    ("SELECT completion AS answer, prompt FROM train", "completion (or label)"),
    ("SELECT 1 AS x", "prompt, completion (or label)"),
])
async def test_missing_columns_are_named(data, servicer, admin, query, column, dispatcher):
    jobs_before = files_under(data.config.home / "artifacts")
    with pytest.raises(InvalidArgument) as err:
        await create(servicer, admin, training_query=query)
    assert f"must return column{'s' if ',' in column else ''} {column}" in err.value.message
    assert files_under(data.config.home / "artifacts") == jobs_before
    assert dispatcher.submitted == []


async def test_other_columns_are_ignored_and_case_does_not_matter(data, servicer, admin):
    job = await create(servicer, admin,
                       training_query="SELECT prompt AS PROMPT, completion AS Completion, "
                                      "extra FROM train")
    rows = read_jsonl(data, f"{data.artifacts.root}/jobs/{job.id}/data/training.jsonl")
    assert set(rows[0]) == {"prompt", "completion"}


async def test_zero_rows_and_too_many_rows(data, servicer, admin, control):
    with pytest.raises(InvalidArgument, match="returned 0 rows"):
        await create(servicer, admin, training_query="SELECT * FROM train WHERE false")
    load_rows(control, admin.account_id, "big", instruction_rows(11))
    # tiny-base allows 30 rows per epoch: 10 rows for 3 epochs
    with pytest.raises(InvalidArgument) as err:
        await create(servicer, admin, training_query="SELECT * FROM big")
    assert "returned 11 rows, more than the limit of 10 rows for 3 epochs" in err.value.message
    job = await create(servicer, admin, training_query="SELECT * FROM big",
                       options=jobs_pb2.FineTuningOptions(max_epochs=2))
    # without a validation query one row in ten is held out for validation
    assert (job.training_rows, job.validation_rows) == (10, 1)
    assert job.validation_source == jobs_pb2.HOLDOUT
    assert [p.name for p in (data.config.home / "artifacts" / "jobs").iterdir()] == [job.id]


async def test_null_values_are_rejected_with_the_row(data, servicer, admin, control):
    load_rows(control, admin.account_id, "holes", [{"prompt": "p", "completion": "c"},
                                                    {"prompt": "p2"}])
    with pytest.raises(InvalidArgument, match="row 2 has a NULL completion"):
        await create(servicer, admin, training_query="SELECT * FROM holes ORDER BY prompt")


async def test_hostile_training_query_is_rejected(data, servicer, admin):
    with pytest.raises(InvalidArgument, match="only SELECT"):
        await create(servicer, admin, training_query="COPY train TO '/tmp/x.csv'")
    with pytest.raises(InvalidArgument):
        await create(servicer, admin, training_query="SELECT * FROM read_csv('/etc/passwd')")


@pytest.mark.parametrize("overrides,message", [
    ({"model": "bad-name"}, "not a valid identifier"),
    ({"model": ""}, "model name is empty"),
    ({"base_model": "gpt-17"}, "unknown base model 'gpt-17' (available: tiny-base)"),
    ({"base_model": ""}, "base_model is required"),
    ({"training_query": " "}, "training_query is required"),
    ({"options": jobs_pb2.FineTuningOptions(max_epochs=11)}, "max_epochs must be between"),
    ({"options": jobs_pb2.FineTuningOptions(lora_rank=64)}, "lora_rank must be between 1 and 32"),
])
async def test_invalid_requests(data, servicer, admin, overrides, message):
    with pytest.raises(InvalidArgument) as err:
        await create(servicer, admin, **overrides)
    assert message in err.value.message


async def test_request_id_makes_create_idempotent(data, servicer, admin, dispatcher):
    first = await create(servicer, admin, request_id="req-1")
    again = await create(servicer, admin, request_id="req-1")
    assert again.id == first.id
    assert len(dispatcher.submitted) == 1
    other = await create(servicer, admin, request_id="req-2", model="another")
    assert other.id != first.id


async def test_request_ids_are_per_account(data, servicer, admin, control):
    first = await create(servicer, admin, request_id="req-1")
    someone, _ = new_account(control, "acme")
    load_rows(control, "acme", "train", instruction_rows(2))
    theirs = await create(servicer, someone, request_id="req-1")
    assert theirs.id != first.id


async def test_output_name_taken_by_a_model_or_an_active_job(data, servicer, admin, control,
                                                            dispatcher):
    job = await create(servicer, admin)
    with pytest.raises(AlreadyExists, match=f"job {job.id} is already training"):
        await create(servicer, admin, model="PUBLIC.PUBLIC.my_model")
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id))
    with pytest.raises(AlreadyExists, match="model public.public.my_model already exists"):
        await create(servicer, admin)


async def test_a_failed_job_frees_its_name(data, servicer, admin):
    job = await create(servicer, admin)
    with acting_as(admin):
        await servicer.CancelFineTuningJob(jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)
    again = await create(servicer, admin)
    assert again.id != job.id


async def test_get_list_and_pagination(data, servicer, admin):
    ids = [(await create(servicer, admin, model=f"m{i}")).id for i in range(5)]
    with acting_as(admin):
        got = await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=ids[0]), None)
        assert got.id == ids[0] and got.training_data.startswith("SELECT")
        seen, token = [], ""
        while True:
            page = await servicer.ListFineTuningJobs(
                jobs_pb2.ListFineTuningJobsRequest(page_size=2, page_token=token), None)
            assert len(page.jobs) <= 2
            seen += [j.id for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        assert seen == list(reversed(ids))  # newest first, each once
        with pytest.raises(InvalidArgument, match="page_token"):
            await servicer.ListFineTuningJobs(
                jobs_pb2.ListFineTuningJobsRequest(page_token="garbage!"), None)


async def test_nothing_crosses_accounts(data, servicer, admin, control):
    job = await create(servicer, admin)
    someone, _ = new_account(control, "acme")
    with acting_as(someone):
        with pytest.raises(NotFound):
            await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id), None)
        with pytest.raises(NotFound):
            await servicer.CancelFineTuningJob(
                jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)
        listed = await servicer.ListFineTuningJobs(jobs_pb2.ListFineTuningJobsRequest(), None)
        assert list(listed.jobs) == []
        # their queries cannot read our tables either
        with pytest.raises(InvalidArgument, match="(?i)train"):
            await servicer.CreateFineTuningJob(request(), None)
    with acting_as(admin):
        with pytest.raises(NotFound):
            await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id="ft_nope"), None)


async def test_cancel_stops_the_cluster_job_and_is_final(data, servicer, admin, dispatcher):
    job = await create(servicer, admin)
    with acting_as(admin):
        cancelled = await servicer.CancelFineTuningJob(
            jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)
        assert cancelled.status == jobs_pb2.CANCELLED and cancelled.HasField("finished_on")
        assert dispatcher.stopped == [job.id]
        with pytest.raises(FailedPrecondition, match="already CANCELLED"):
            await servicer.CancelFineTuningJob(
                jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)


async def test_cancel_of_a_successful_job_is_failed_precondition(data, servicer, admin, control,
                                                                 dispatcher):
    job = await create(servicer, admin)
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id))
    with acting_as(admin), pytest.raises(FailedPrecondition):
        await servicer.CancelFineTuningJob(jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)
    assert dispatcher.stopped == []


async def test_progress_reports_update_the_job(data, servicer, reporting, admin):
    job = await create(servicer, admin)
    answer = await reporting.ReportProgress(internal_pb2.ReportProgressRequest(
        job_id=job.id, progress=0.5, epoch=1, step=3, total_steps=6, trained_tokens=300,
        training_loss=1.25), None)
    assert not answer.cancelled
    with acting_as(admin):
        got = await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id), None)
    assert got.status == jobs_pb2.IN_PROGRESS and got.HasField("started_on")
    assert (got.progress, got.epoch, got.step, got.total_steps, got.trained_tokens) == \
        (0.5, 1, 3, 6, 300)
    assert got.training_result.training_loss == 1.25
    assert not got.training_result.has_validation_loss
    await reporting.ReportProgress(internal_pb2.ReportProgressRequest(
        job_id=job.id, progress=1.0, epoch=1, step=6, total_steps=6, trained_tokens=600,
        training_loss=1.0, validation_loss=1.5, has_validation_loss=True), None)
    with acting_as(admin):
        got = await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id), None)
    assert got.training_result.has_validation_loss and got.training_result.validation_loss == 1.5


async def test_progress_answers_cancelled_after_cancel(data, servicer, reporting, admin):
    job = await create(servicer, admin)
    with acting_as(admin):
        await servicer.CancelFineTuningJob(jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)
    answer = await reporting.ReportProgress(
        internal_pb2.ReportProgressRequest(job_id=job.id, progress=0.9, step=5), None)
    assert answer.cancelled
    with acting_as(admin):
        got = await servicer.GetFineTuningJob(jobs_pb2.GetFineTuningJobRequest(id=job.id), None)
    assert got.status == jobs_pb2.CANCELLED and got.progress == 0.0  # no update after the end
    with pytest.raises(NotFound):
        await reporting.ReportProgress(internal_pb2.ReportProgressRequest(job_id="ft_x"), None)


async def test_watch_streams_changes_until_terminal(data, servicer, reporting, admin):
    job = await create(servicer, admin)
    seen = []

    async def watch():
        with acting_as(admin):
            async for update in servicer.WatchFineTuningJob(
                    jobs_pb2.WatchFineTuningJobRequest(id=job.id), None):
                seen.append(update)
                if len(seen) == 1:
                    await reporting.ReportProgress(internal_pb2.ReportProgressRequest(
                        job_id=job.id, progress=0.25, step=1, total_steps=4), None)
                elif len(seen) == 2:
                    await servicer.CancelFineTuningJob(
                        jobs_pb2.CancelFineTuningJobRequest(id=job.id), None)

    await asyncio.wait_for(watch(), timeout=30)  # a hang guard, not a timing assertion
    assert [u.status for u in seen] == [jobs_pb2.PENDING, jobs_pb2.IN_PROGRESS,
                                        jobs_pb2.CANCELLED]
    assert seen[1].progress == 0.25


async def test_watch_of_an_unknown_job_is_not_found(data, servicer, admin):
    with acting_as(admin), pytest.raises(NotFound):
        async for _ in servicer.WatchFineTuningJob(
                jobs_pb2.WatchFineTuningJobRequest(id="ft_missing"), None):
            pass


async def test_a_failed_submit_leaves_the_job_pending_for_the_reconciler(
        data, servicer, admin, dispatcher, control):
    dispatcher.fail_submit = ClusterUnavailable("Ray is down")
    job = await create(servicer, admin)
    assert job.status == jobs_pb2.PENDING and dispatcher.submitted == []
    dispatcher.fail_submit = None
    control.reconciler.reconcile_once()
    assert [s[0] for s in dispatcher.submitted] == [job.id]


async def test_chat_and_continued_pretraining_tasks(data, servicer, admin, control):
    load_rows(control, admin.account_id, "chats", [
        {"messages": json.dumps([{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}])}])
    load_rows(control, admin.account_id, "docs", [{"text": "some text"}])
    chat = await create(servicer, admin, model="chatty", training_query="SELECT * FROM chats",
                        options=jobs_pb2.FineTuningOptions(task_type=jobs_pb2.CHAT))
    text = await create(servicer, admin, model="reader", training_query="SELECT * FROM docs",
                        options=jobs_pb2.FineTuningOptions(
                            task_type=jobs_pb2.CONTINUED_PRETRAINING))
    root = data.artifacts.root
    assert read_jsonl(data, f"{root}/jobs/{chat.id}/data/training.jsonl") == [
        {"messages": [{"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]}]
    assert read_jsonl(data, f"{root}/jobs/{text.id}/data/training.jsonl") == [
        {"text": "some text"}]
    spec = json.loads(data.artifacts.read_bytes(f"{root}/jobs/{chat.id}/spec.json"))
    assert spec["task_type"] == "CHAT"
    with pytest.raises(InvalidArgument, match="must return column messages"):
        await create(servicer, admin, model="x", training_query="SELECT * FROM train",
                     options=jobs_pb2.FineTuningOptions(task_type=jobs_pb2.CHAT))


async def test_continue_training_from_a_model(data, servicer, admin, control, dispatcher):
    parent = await create(servicer, admin)
    succeed(control, dispatcher, control.fine_tuning.get(admin, parent.id))
    child = await create(servicer, admin, model="my_model_v2", base_model="",
                         options=jobs_pb2.FineTuningOptions(from_model="my_model"))
    assert child.base_model == "tiny-base"
    assert child.options.from_model == "public.public.my_model"
    spec = json.loads(data.artifacts.read_bytes(
        f"{data.artifacts.root}/jobs/{child.id}/spec.json"))
    assert spec["from_adapter_uri"] == f"{data.artifacts.root}/jobs/{parent.id}/output"
    with pytest.raises(NotFound, match="from_model"):
        await create(servicer, admin, model="m3",
                     options=jobs_pb2.FineTuningOptions(from_model="nothing_here"))
