"""POST /v1/files and /v1/fine_tuning/jobs: uploads become catalog tables and jobs are
FINETUNE jobs, through control's public API with the caller's key (see fine_tuning.py for the
rules)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, UploadFile

from finetune.control.v1 import data_pb2
from services.common.errors import NotFound, ResourceExhausted
from services.openai_api import fine_tuning as ft
from services.openai_api.context import ApiContext, ApiKey, Context
from services.openai_api.errors import InvalidRequest
from services.openai_api.protocol import FineTuningJobRequest

router = APIRouter()

# Uploads are parsed whole before their rows go to control.
MAX_FILE_BYTES = 512 << 20
CONTROL_PAGE = 100
DEFAULT_LIMIT, MAX_LIMIT = 20, 100


@router.post("/v1/files")
async def create_file(file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()],
                      key: ApiKey, ctx: Context,
                      schema_form: Annotated[str | None, Form(alias="schema")] = None,
                      schema_query: Annotated[str | None, Query(alias="schema")] = None
                      ) -> dict[str, Any]:
    if purpose != "fine-tune":
        raise InvalidRequest(f"purpose {purpose!r} is not supported (fine-tune only)", "purpose")
    size = file.size if file.size is not None else 0
    if size > MAX_FILE_BYTES:
        raise ResourceExhausted(f"the file is larger than {MAX_FILE_BYTES >> 20} MiB")
    rows = await asyncio.to_thread(lambda: [row for _, row in ft.training_rows(file.file)])
    table = await ctx.control.load_rows(key, ft.upload_table(schema_form or schema_query),
                                        rows)
    return ft.file_object(table.name, size, file.filename or "", int(time.time()))


async def _table(ctx: ApiContext, key: str, file_id: str, param: str) -> data_pb2.Table:
    database, schema, name = ft.split_table(file_id)
    wanted = f"{database}.{schema}.{name}".lower()
    for table in await ctx.control.tables(key, database):
        if table.name.lower() == wanted:
            return table
    raise NotFound(f"file {file_id} does not exist or is not authorized ({param})")


@router.post("/v1/fine_tuning/jobs")
async def create_job(body: FineTuningJobRequest, key: ApiKey, ctx: Context,
                     idempotency_key: Annotated[str, Header()] = "") -> dict[str, Any]:
    training = await _table(ctx, key, body.training_file, "training_file")
    kind = ft.table_kind(c.name for c in training.columns)
    validation = None
    if body.validation_file:
        validation = await _table(ctx, key, body.validation_file, "validation_file")
        if ft.table_kind(c.name for c in validation.columns) != kind:
            raise InvalidRequest("the validation file's rows are not of the training file's "
                                 "kind", "validation_file")
    request = ft.create_request(body, training.name, kind,
                                validation.name if validation is not None else None,
                                ctx.default_learning_rates.get(body.model),
                                idempotency_key)
    job = await ctx.control.create_job(key, request)
    return ft.job_object(job, ctx.default_learning_rates)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}", "limit")
    return limit


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(key: ApiKey, ctx: Context, after: str | None = None,
                    limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Newest first; `after` is the last job id of the previous page."""
    limit = _limit(limit)
    found: list[dict[str, Any]] = []
    skipping, token = bool(after), ""
    while len(found) <= limit:
        page = await ctx.control.list_jobs(key, CONTROL_PAGE, token)
        for job in page.jobs:
            if skipping:
                skipping = job.id != after
                continue
            found.append(ft.job_object(job, ctx.default_learning_rates))
        token = page.next_page_token
        if not token:
            break
    return ft.page(found, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def get_job(job_id: str, key: ApiKey,
                  ctx: Context) -> dict[str, Any]:
    return ft.job_object(await ctx.control.get_job(key, job_id), ctx.default_learning_rates)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, key: ApiKey,
                     ctx: Context) -> dict[str, Any]:
    return ft.job_object(await ctx.control.cancel_job(key, job_id), ctx.default_learning_rates)


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(job_id: str, key: ApiKey, ctx: Context, after: str | None = None,
                     limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """Newest first; `after` is the last event id of the previous page."""
    limit = _limit(limit)
    before = ft.event_position(after)
    found: list[dict[str, Any]] = []
    token = ""
    while len(found) <= limit:
        page = await ctx.control.job_events(key, job_id, CONTROL_PAGE, token)
        found += [ft.event_object(e) for e in page.events if before is None or e.id < before]
        token = page.next_page_token
        if not token:
            break
    return ft.page(found, limit)
