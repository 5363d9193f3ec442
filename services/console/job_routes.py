"""Jobs: the list (polled by htmx), the create form with its preview and estimate, a job's
page (its live part polled until the job ends), cancel."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from services.console import page_data, pages
from services.console.forms import EVALUATION_TASKS, TASK_TYPES, JobForm
from services.console.rendering import base_path, is_htmx, page, render
from services.console.session import Key
from services.openai_api.context import Context

router = APIRouter()
PREVIEW_ROWS = 5
POLL_S = 2


@router.get("/jobs")
async def jobs(request: Request, key: Key, ctx: Context, state: str = "") -> Response:
    rows = await page_data.jobs(ctx.control, key, state)
    return await page(request, ctx.control, key, "jobs.html",
                      {"rows": rows, "state": state, "poll_s": POLL_S})


@router.get("/jobs/rows")
async def job_rows(request: Request, key: Key, ctx: Context, state: str = "") -> Response:
    rows = await page_data.jobs(ctx.control, key, state)
    return render(request, "_job_rows.html", {"rows": rows, "state": state})


@router.get("/jobs/new")
async def new_job(request: Request, key: Key, ctx: Context) -> Response:
    base_models = await ctx.control.base_models(key)
    # One request id per form: a second click on Start returns the same job (AIP-155).
    return await page(request, ctx.control, key, "new_job.html", {
        "base_models": base_models, "request_id": str(uuid.uuid4()), "task_types": TASK_TYPES,
        "evaluation_tasks": EVALUATION_TASKS})


async def _form(request: Request) -> JobForm:
    form = await request.form()
    return JobForm.parse({k: v for k, v in form.items() if isinstance(v, str)})


@router.post("/jobs/new/preview")
async def preview(request: Request, key: Key, ctx: Context) -> Response:
    form = await _form(request)
    result = await ctx.control.preview_query(key, form.training_query, PREVIEW_ROWS)
    return render(request, "_preview.html", {"result": result})


@router.post("/jobs/new/estimate")
async def estimate(request: Request, key: Key, ctx: Context) -> Response:
    form = await _form(request)
    result = await ctx.control.estimate_job(key, form.estimate_request())
    return render(request, "_estimate.html",
                  {"estimate": result, "rows": pages.estimate_rows(result)})


@router.post("/jobs/new")
async def create_job(request: Request, key: Key, ctx: Context) -> Response:
    form = await _form(request)
    job = await ctx.control.create_job(key, form.create_request())
    target = f"{base_path(request)}/jobs/{job.id}"
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, key: Key, ctx: Context) -> Response:
    data = await page_data.job(ctx.control, key, job_id)
    return await page(request, ctx.control, key, "job.html", {**data, "poll_s": POLL_S})


@router.get("/jobs/{job_id}/live")
async def job_live(request: Request, job_id: str, key: Key, ctx: Context) -> Response:
    """The status part of a running job's page; once the job has ended, the whole page again
    (its chart from training_results.csv, its evaluations)."""
    job = await ctx.control.get_job(key, job_id)
    if pages.is_terminal(job):
        return Response(status_code=204, headers={"HX-Refresh": "true"})
    return render(request, "_job_live.html",
                  {"job": job, "row": pages.job_row(job), "terminal": False, "poll_s": POLL_S})


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, key: Key, ctx: Context) -> Response:
    await ctx.control.cancel_job(key, job_id)
    return Response(status_code=204, headers={"HX-Refresh": "true"})
