"""The job event log: what CREATE, the trainer's reports, the reconciler and CANCEL record, each
exactly once, and who may read it."""

import pytest
from control_testbed import (acting_as, instruction_rows, load_rows, new_account, new_user,
                             succeed)

from finetune.control.v1 import internal_pb2, jobs_pb2
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.control.api.internal import JobReportingServicer
from services.control.api.jobs import FineTuningServicer
from services.control.core.jobs import CreateJob
from services.control.dispatch.protocol import ClusterJobStatus
from services.control.domain.options import RequestedOptions

TWO_EPOCHS = RequestedOptions(max_epochs=2)   # tiny-base: 30 rows per epoch, so 15 rows


@pytest.fixture
def servicer(control):
    return FineTuningServicer(control.fine_tuning, control.events,
                              watch_poll_s=0.2)


def create(control, admin, rows=12, **fields):
    load_rows(control, admin.account_id, "train", instruction_rows(rows))
    request = dict(model="m", base_model="tiny-base", training_query="SELECT * FROM train",
                   options=TWO_EPOCHS)
    request.update(fields)
    return control.fine_tuning.create(admin, CreateJob(**request))


def events(control, admin, job_id, **kwargs):
    return control.fine_tuning.events(admin, job_id, **kwargs).events


def types(control, admin, job_id):
    return [e.type for e in events(control, admin, job_id)]


def test_create_records_the_job_its_data_and_the_submission(control, admin):
    job = create(control, admin)
    log = events(control, admin, job.id)
    assert [e.type for e in log] == ["job.created", "data.snapshot", "data.holdout",
                                     "job.submitted"]
    created, snapshot, holdout, submitted = log
    assert "model public.public.m" in created.message and "by admin" in created.message
    assert created.metrics["estimated_trained_tokens"] == job.estimated_trained_tokens > 0
    assert job.training_data_sha256 in snapshot.message and snapshot.metrics["rows"] == 11
    assert "held out 1 of the training query's 12 rows" in holdout.message
    assert "seed 42" in holdout.message
    assert submitted.message == "submitted to the cluster (attempt 1)"
    assert [e.id for e in log] == sorted(e.id for e in log)


def test_few_rows_hold_nothing_out_and_say_so(control, admin):
    job = create(control, admin, rows=4)
    assert (job.training_rows, job.validation_rows, job.validation_source) == (4, 0, "NONE")
    warning = [e for e in events(control, admin, job.id) if e.type == "data.holdout"][0]
    assert warning.level.value == "WARNING"
    assert "only 4 rows (fewer than 10): none held out" in warning.message


def test_a_validation_query_is_its_own_snapshot(control, admin):
    load_rows(control, admin.account_id, "holdout", instruction_rows(3))
    job = create(control, admin, validation_query="SELECT * FROM holdout")
    snapshots = [e.message for e in events(control, admin, job.id) if e.type == "data.snapshot"]
    assert len(snapshots) == 2 and "3 rows from the validation query" in snapshots[1]
    assert "data.holdout" not in types(control, admin, job.id)


def test_truncated_rows_are_a_warning(control, admin):
    load_rows(control, admin.account_id, "long", [
        {"prompt": "short", "completion": " ".join(["word"] * 200)},
        {"prompt": "short", "completion": "fine"}])
    job = control.fine_tuning.create(admin, CreateJob(
        model="m", base_model="tiny-base", training_query="SELECT * FROM long"))
    assert job.truncated_rows == 1
    warning = [e for e in events(control, admin, job.id) if e.type == "data.truncation"][0]
    assert "1 row exceeds the base model's allocation of 384 prompt and 128 completion" \
        in warning.message


def test_progress_milestones_start_and_success(control, admin, dispatcher):
    job = create(control, admin)
    reporting = JobReportingServicer(control.fine_tuning)

    async def report(**fields):
        await reporting.ReportProgress(internal_pb2.ReportProgressRequest(job_id=job.id,
                                                                          **fields), None)
    import asyncio
    asyncio.run(report(progress=0.0, message="preparing data"))
    for step in (1, 2):  # steps without a message update the job only
        asyncio.run(report(progress=step / 6, epoch=1, step=step, total_steps=6,
                           trained_tokens=10 * step, training_loss=2.0))
    asyncio.run(report(progress=0.5, epoch=1, step=3, total_steps=6, trained_tokens=30,
                       training_loss=1.5, validation_loss=1.75, has_validation_loss=True,
                       message="epoch 1 of 2 done"))
    succeed(control, dispatcher, control.fine_tuning.get(admin, job.id))
    control.reconciler.reconcile_once()   # again: nothing new
    log = events(control, admin, job.id)
    assert [e.type for e in log][4:] == ["job.started", "training.progress",
                                         "training.progress", "job.succeeded",
                                         "model.registered"]
    epoch = log[6]
    assert epoch.message == "epoch 1 of 2 done"
    assert epoch.metrics == {"progress": 0.5, "epoch": 1.0, "step": 3.0, "total_steps": 6.0,
                             "trained_tokens": 30.0, "training_loss": 1.5,
                             "validation_loss": 1.75}
    assert "4321 trained tokens, training loss 0.4200, validation loss 0.5500" in log[7].message
    assert log[8].message == "model public.public.m registered (version 1)"


def test_failure_and_cancel_are_logged_once(control, admin, dispatcher):
    failing = create(control, admin)
    dispatcher.set(failing.id, ClusterJobStatus.FAILED, "exit code 1")
    control.reconciler.reconcile_once()
    control.reconciler.reconcile_once()
    failed = [e for e in events(control, admin, failing.id) if e.type == "job.failed"]
    assert len(failed) == 1 and failed[0].level.value == "ERROR"
    assert "TRAINING_FAILED" in failed[0].message and "exit code 1" in failed[0].message

    cancelled = control.fine_tuning.create(admin, CreateJob(
        model="m2", base_model="tiny-base", training_query="SELECT * FROM train",
        options=TWO_EPOCHS))
    control.fine_tuning.cancel(admin, cancelled.id)
    control.reconciler.reconcile_once()   # the cluster now says STOPPED: already final
    log = [e for e in events(control, admin, cancelled.id) if e.type == "job.cancelled"]
    assert [e.message for e in log] == ["job cancelled by admin"]


def test_paging_both_ways(control, admin):
    job = create(control, admin)
    everything = [e.id for e in events(control, admin, job.id)]
    for newest_first in (False, True):
        seen, token = [], ""
        while True:
            page = control.fine_tuning.events(admin, job.id, page_size=1, page_token=token,
                                              newest_first=newest_first)
            seen += [e.id for e in page.events]
            token = page.next_page_token
            if not token:
                break
        assert seen == (list(reversed(everything)) if newest_first else everything)
    first = control.fine_tuning.events(admin, job.id, page_size=1)
    with pytest.raises(InvalidArgument, match="newest_first"):
        control.fine_tuning.events(admin, job.id, page_token=first.next_page_token,
                                   newest_first=True)


async def test_the_log_is_for_those_who_may_describe_the_job(control, admin, servicer):
    job = create(control, admin)
    with acting_as(admin):
        listed = await servicer.ListFineTuningJobEvents(
            jobs_pb2.ListFineTuningJobEventsRequest(id=job.id, newest_first=True,
                                                    page_size=2), None)
    assert [e.type for e in listed.events] == ["job.submitted", "data.holdout"]
    assert listed.events[0].level == jobs_pb2.EVENT_INFO and listed.next_page_token
    assert listed.events[0].time.seconds > 0
    stranger, _ = new_account(control, "acme")
    outsider, _ = new_user(control, admin.account_id, "bob", ("PUBLIC",))
    with acting_as(stranger), pytest.raises(NotFound):
        await servicer.ListFineTuningJobEvents(
            jobs_pb2.ListFineTuningJobEventsRequest(id=job.id), None)
    with acting_as(outsider), pytest.raises(PermissionDenied):
        await servicer.ListFineTuningJobEvents(
            jobs_pb2.ListFineTuningJobEventsRequest(id=job.id), None)
