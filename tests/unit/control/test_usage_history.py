"""Usage history: a fine-tuning row written exactly once when a job ends, inference rows per
request, credits from the price table, the UsageService views and who sees what."""

from datetime import datetime, timedelta, timezone

import pytest
from control_components import control_components
from control_testbed import (SERVICE_TOKEN, acting_as, instruction_rows, load_rows, new_user,
                             succeed, word_tokenizers)

from finetune.control.v1 import internal_pb2, usage_pb2
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.control.api.internal import JobReportingServicer, ModelResolutionServicer
from services.control.api.usage import UsageServicer
from services.control.core.jobs import CreateJob
from services.control.core.usage import load_price_table
from services.control.dispatch.protocol import ClusterJobStatus
from services.control.domain.jobs import JobProgress
from services.control.store.tables import FineTuningUsageRow

PRICES = """
[default]
training = 4.0
inference = 0.5

[models.tiny-base]
training = 2.0
inference = 0.25
"""


@pytest.fixture
def control(tmp_path, tiny_base, dispatcher):
    """The control components with a price table of our own."""
    (tmp_path / "prices.toml").write_text(PRICES)
    with control_components(tmp_path / "home", tiny_base, service_token=SERVICE_TOKEN,
                            dispatcher=dispatcher, tokenizers=word_tokenizers(), port=50999,
                            prices_path=tmp_path / "prices.toml") as components:
        yield components


@pytest.fixture
def usage(control):
    return UsageServicer(control.usage)


def new_job(control, principal, name="m"):
    load_rows(control, principal.account_id, "train", instruction_rows(3))
    return control.fine_tuning.create(principal, CreateJob(
        model=name, base_model="tiny-base", training_query="SELECT * FROM train"))


def usage_rows(control):
    with control.store.transaction() as tx:
        return tx.session.query(FineTuningUsageRow).all()


async def list_fine_tuning(usage, principal, **filter_fields):
    with acting_as(principal):
        return (await usage.ListFineTuningUsage(usage_pb2.ListFineTuningUsageRequest(
            filter=usage_pb2.UsageFilter(**filter_fields)), None)).usage


async def test_a_successful_job_is_counted_once_with_its_credits(control, usage, admin,
                                                                 dispatcher):
    job = new_job(control, admin)
    succeed(control, dispatcher, job, trained_tokens=3_000_000)
    control.reconciler.reconcile_once()
    done = control.fine_tuning.get(admin, job.id)
    control.reconciler.reconcile_job(done, dispatcher.status(job.id))  # once more, terminal
    rows = usage_rows(control)
    assert len(rows) == 1
    [record] = await list_fine_tuning(usage, admin)
    assert (record.job_id, record.model, record.base_model, record.user, record.status) == \
        (job.id, "public.public.m", "tiny-base", "admin", "SUCCESS")
    assert record.trained_tokens == 3_000_000
    assert record.credits == pytest.approx(6.0)  # 3M tokens at 2 credits per million
    assert record.end_time.ToDatetime(tzinfo=timezone.utc) == done.finished_on
    assert record.start_time.ToDatetime(tzinfo=timezone.utc) == done.started_on


async def test_jobs_that_end_otherwise_count_what_they_trained(control, admin, dispatcher):
    cancelled = new_job(control, admin, "c")
    control.fine_tuning.report_progress(cancelled.id, JobProgress(0.5, 1, 2, 4, 1000))
    control.fine_tuning.cancel(admin, cancelled.id)
    failed = new_job(control, admin, "f")
    control.fine_tuning.report_progress(failed.id, JobProgress(0.5, 1, 2, 4, 500))
    dispatcher.set(failed.id, ClusterJobStatus.FAILED, "boom")
    never_ran = new_job(control, admin, "n")
    control.fine_tuning.cancel(admin, never_ran.id)
    control.reconciler.reconcile_once()
    control.reconciler.reconcile_once()
    rows = {r.job_id: r for r in usage_rows(control)}
    assert set(rows) == {cancelled.id, failed.id}   # nothing trained: no row
    assert (rows[cancelled.id].status, rows[cancelled.id].trained_tokens) == ("CANCELLED", 1000)
    assert (rows[failed.id].status, rows[failed.id].trained_tokens) == ("ERROR", 500)
    assert rows[failed.id].credits == pytest.approx(500 * 2.0 / 1e6)


async def report(control, request_id, principal, model="tiny-base", prompt=10, completion=5):
    await ModelResolutionServicer(control.resolution, control.inference_usage, 30).ReportUsage(
        internal_pb2.ReportUsageRequest(
            request_id=request_id, account_id=principal.account_id, user_id=principal.user_id,
            model=model, base_model="tiny-base", prompt_tokens=prompt,
            completion_tokens=completion), None)


@pytest.fixture
def clock(control, monkeypatch):
    """A settable clock for usage records."""
    now = [datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)]
    monkeypatch.setattr(control.inference_usage, "_clock", lambda: now[0])
    return now


async def test_inference_usage_views(control, usage, admin, clock):
    control.directory.create_role(admin, "analyst")
    ann, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    await report(control, "r1", admin, prompt=1_000_000, completion=1_000_000)
    await report(control, "r1", admin)   # a retried report is counted once
    clock[0] += timedelta(hours=1)
    await report(control, "r2", ann, model="public.public.bot")
    clock[0] += timedelta(days=1)
    await report(control, "r3", ann, model="public.public.bot", prompt=7, completion=3)

    with acting_as(admin):
        listed = await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(), None)
        assert [u.request_id for u in listed.usage] == ["r3", "r2", "r1"]
        first = listed.usage[2]
        assert (first.user, first.total_tokens) == ("admin", 2_000_000)
        assert first.credits == pytest.approx(0.5)   # 2M tokens at 0.25 per million
        page = await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
            page_size=2), None)
        rest = await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
            page_size=2, page_token=page.next_page_token), None)
        assert [u.request_id for u in [*page.usage, *rest.usage]] == ["r3", "r2", "r1"]
        assert not rest.next_page_token
        day_two = usage_pb2.UsageFilter(model="bot")
        day_two.start_time.FromDatetime(datetime(2025, 3, 2, tzinfo=timezone.utc))
        filtered = await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
            filter=day_two), None)
        assert [u.request_id for u in filtered.usage] == ["r3"]
        by_user = await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
            filter=usage_pb2.UsageFilter(user="ann")), None)
        assert [u.request_id for u in by_user.usage] == ["r3", "r2"]

        grouped = await usage.AggregateInferenceUsage(usage_pb2.AggregateInferenceUsageRequest(
            group_by=[usage_pb2.GROUP_BY_MODEL, usage_pb2.GROUP_BY_DAY]), None)
        assert [(g.model, g.day, g.requests, g.total_tokens) for g in grouped.groups] == [
            ("public.public.bot", "2025-03-01", 1, 15), ("public.public.bot", "2025-03-02", 1, 10),
            ("tiny-base", "2025-03-01", 1, 2_000_000)]
        by_user = await usage.AggregateInferenceUsage(usage_pb2.AggregateInferenceUsageRequest(
            group_by=[usage_pb2.GROUP_BY_USER]), None)
        assert [(g.user, g.requests, g.prompt_tokens) for g in by_user.groups] == [
            ("admin", 1, 1_000_000), ("ann", 2, 17)]
        total = await usage.AggregateInferenceUsage(
            usage_pb2.AggregateInferenceUsageRequest(), None)
        assert [(g.requests, g.total_tokens) for g in total.groups] == [(3, 2_000_025)]
        with pytest.raises(NotFound):
            await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
                filter=usage_pb2.UsageFilter(user="nobody")), None)
        with pytest.raises(InvalidArgument):
            await usage.AggregateInferenceUsage(usage_pb2.AggregateInferenceUsageRequest(
                group_by=[usage_pb2.GROUP_BY_DAY, usage_pb2.GROUP_BY_DAY]), None)
        with pytest.raises(InvalidArgument):
            await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
                page_token="garbage"), None)

    # everyone else sees their own usage only
    with acting_as(ann):
        mine = await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(), None)
        assert [u.request_id for u in mine.usage] == ["r3", "r2"]
        total = await usage.AggregateInferenceUsage(
            usage_pb2.AggregateInferenceUsageRequest(), None)
        assert [g.requests for g in total.groups] == [2]
        for user in ("admin", "nobody"):
            with pytest.raises(PermissionDenied):
                await usage.ListInferenceUsage(usage_pb2.ListInferenceUsageRequest(
                    filter=usage_pb2.UsageFilter(user=user)), None)


async def test_fine_tuning_usage_is_per_user_for_non_admins(control, usage, admin, dispatcher):
    control.directory.create_role(admin, "analyst")
    control.directory.grant_role(admin, "finetune_user", "ROLE", "analyst")
    ann, _ = new_user(control, admin.account_id, "ann", ("ANALYST",))
    succeed(control, dispatcher, new_job(control, admin, "admins"))
    assert [u.model for u in await list_fine_tuning(usage, admin)] == ["public.public.admins"]
    assert await list_fine_tuning(usage, ann) == []
    with pytest.raises(PermissionDenied):
        await list_fine_tuning(usage, ann, user="admin")


def test_price_tables_load_from_toml(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(PRICES)
    assert load_price_table(path).price("tiny-base").inference == 0.25
    path.write_text("[default]\ntraining = -1\n")
    with pytest.raises(ValueError, match="invalid price table"):
        load_price_table(path)
    shipped = load_price_table(None)   # deploy/prices.toml
    assert shipped.price("smollm2-135m-instruct").training > 0


async def test_progress_reports_write_no_usage(control, admin):
    job = new_job(control, admin)
    await JobReportingServicer(control.fine_tuning).ReportProgress(
        internal_pb2.ReportProgressRequest(job_id=job.id, progress=0.5, trained_tokens=10), None)
    assert usage_rows(control) == []   # only the end of a job writes usage


def test_a_usage_row_says_what_made_the_call():
    from services.control.domain.usage import InferenceUsage

    def source(request_id):
        return InferenceUsage(request_id, "u", "m", "b", 1, 1, 0.0,
                              datetime.now(timezone.utc)).source
    assert source("gen_4f2c/17") == "GENERATION"
    assert source("ev_9a/1/3") == "EVALUATION"
    assert source("cmpl-5d") == "COMPLETE" and source("") == "COMPLETE"
