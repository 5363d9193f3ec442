"""What each page fetches from control, with the caller's key, shaped by `pages` for its
template. A refusal that concerns the whole page propagates (and is shown as the page); one
that concerns a part of it (a results file the caller may not read) is shown in that part."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncIterator, Awaitable, TypeVar

import grpc

from finetune.control.v1 import jobs_pb2, usage_pb2
from services.common.errors import FinetuneError
from services.console import charts, pages
from services.openai_api.control import ControlApi
from services.openai_api.errors import for_exception

MAX_JOBS = 200          # the jobs page lists the newest ones
JOBS_PAGE = 100
MAX_EVENTS = 200
MAX_FINE_TUNING_USAGE = 500
MAX_RESULTS_BYTES = 16 * 1024 * 1024   # a training_results.csv read for a chart
CONCURRENT_CALLS = 8    # per page: GetModel and the download probe, per model
CALL_ERRORS = (grpc.aio.AioRpcError, FinetuneError)
T = TypeVar("T")


def refusal_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and the message a failed call is shown with."""
    status, body = for_exception(exc)
    return status, str(body["error"]["message"])


def refusal_message(exc: BaseException) -> str:
    return refusal_of(exc)[1]


async def jobs(control: ControlApi, key: str, state: str) -> list[pages.JobRow]:
    listed: list[jobs_pb2.FineTuningJob] = []
    token = ""
    while len(listed) < MAX_JOBS:
        page = await control.list_jobs(key, JOBS_PAGE, token)
        listed += page.jobs
        token = page.next_page_token
        if not token:
            break
    return [pages.job_row(j) for j in pages.filter_jobs(listed[:MAX_JOBS], state)]


async def read_artifact(control: ControlApi, key: str, model: str, artifact: str,
                        limit: int = MAX_RESULTS_BYTES) -> bytes:
    out = bytearray()
    async with aclosing(control.artifact_chunks(key, model, artifact)) as chunks:
        async for chunk in chunks:
            out += chunk
            if len(out) > limit:
                raise charts.ChartError(f"{artifact} is larger than {limit} bytes")
    return bytes(out)


async def loss_chart(control: ControlApi, key: str, job: jobs_pb2.FineTuningJob,
                     events: list[jobs_pb2.JobEvent]) -> tuple[charts.Chart, str, str]:
    """The chart, where it came from, and why not from training_results.csv (if not)."""
    if job.status == jobs_pb2.SUCCESS and job.model:
        try:
            text = await read_artifact(control, key, job.model, pages.RESULTS_FILE)
            return charts.loss_chart_from_csv(text.decode()), pages.RESULTS_FILE, ""
        except charts.ChartError as exc:
            note = str(exc)
        except CALL_ERRORS as exc:
            note = refusal_message(exc)
    else:
        note = ""
    return charts.loss_chart_from_events(events), "the job's progress events", note


async def job(control: ControlApi, key: str, job_id: str) -> dict[str, Any]:
    found = await control.get_job(key, job_id)
    events = list((await control.job_events(key, job_id, MAX_EVENTS, "")).events)
    chart, chart_source, chart_note = await loss_chart(control, key, found, events)
    return {
        "job": found, "row": pages.job_row(found), "terminal": pages.is_terminal(found),
        "events": events, "options": pages.option_rows(found, pages.precision_note(events)),
        "lineage": pages.lineage(found), "chart": chart.as_json(), "chart_points": chart.points,
        "chart_source": chart_source, "chart_note": chart_note,
        "has_evaluation": pages.has_evaluation(found),
        "metrics": pages.evaluation_comparison(found.base_evaluation, found.tuned_evaluation),
    }


async def _download_refusal(control: ControlApi, key: str, model: str) -> str:
    """"" when control streams the caller the model's results file (it owns the model),
    else control's message: the page offers downloads only where they would work."""
    try:
        async with aclosing(control.artifact_chunks(key, model, pages.RESULTS_FILE)) as chunks:
            async for _ in chunks:
                break
        return ""
    except CALL_ERRORS as exc:
        return refusal_message(exc)


async def _bounded(calls: list[Awaitable[T]], limit: int = CONCURRENT_CALLS) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call
    return list(await asyncio.gather(*(one(c) for c in calls)))


async def models(control: ControlApi, key: str) -> list[pages.ModelRow]:
    """ListModels names the models (USAGE); GetModel adds each one's evaluations and artifact
    names, which the list leaves out."""
    listed, groups = await asyncio.gather(
        control.models(key),
        control.aggregate_inference_usage(key, [usage_pb2.GROUP_BY_MODEL]))
    described = await _bounded([control.get_model(key, m.name) for m in listed])
    refusals = await _bounded([_download_refusal(control, key, m.name) for m in described])
    return pages.model_rows(described, pages.usage_by_model(groups),
                            {m.name: r for m, r in zip(described, refusals, strict=True)})


async def usage(control: ControlApi, key: str) -> dict[str, Any]:
    by_model_day, by_model, fine_tuning = await asyncio.gather(
        control.aggregate_inference_usage(key, [usage_pb2.GROUP_BY_MODEL,
                                                usage_pb2.GROUP_BY_DAY]),
        control.aggregate_inference_usage(key, [usage_pb2.GROUP_BY_MODEL]),
        control.fine_tuning_usage(key, MAX_FINE_TUNING_USAGE))
    made = pages.usage_charts(by_model_day, fine_tuning)
    return {"charts": {name: chart.as_json() for name, chart in made.items()},
            "points": {name: chart.points for name, chart in made.items()},
            "by_model": sorted(by_model, key=lambda g: g.model), "fine_tuning": fine_tuning}


async def first_and_rest(chunks: AsyncIterator[bytes]) -> tuple[bytes, AsyncIterator[bytes]]:
    """The first chunk of a download, awaited before the response starts: control's refusal
    (OWNERSHIP) comes there, and so is shown as a page rather than a broken file."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:   # an empty file
        first = b""
    return first, chunks
