"""Fakes behind the OpenAI door's two Protocols: the COMPLETE core and control's public API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import httpx2
from google.protobuf.timestamp_pb2 import Timestamp
from openai import AsyncOpenAI

from finetune.control.v1 import data_pb2, jobs_pb2, models_pb2
from services.common.errors import NotFound, PermissionDenied, Unauthenticated
from services.inference.accounting import Usage
from services.inference.completions import Chunk, Completion, check_input
from services.openai_api.context import ApiContext

KEY = "ft_test_key"
BASE = "tiny-base"
TUNED = "shop.public.router"
SHARED = "partner.shop.public.router"   # another account's model, shared with this key's


class FakeCore:
    """The COMPLETE core: answers `reply` word by word after the core's own input checks;
    `error` (raised before the first chunk) and `fail_after` (raised after that many chunks)
    stand for the core's refusals and a failure mid-stream."""

    def __init__(self, reply: str = "the quick brown fox"):
        self.reply = reply.split()
        self.calls: list[tuple] = []
        self.error: Exception | None = None
        self.fail_after: int | None = None
        self.closed = 0

    async def complete(self, api_key, inp):
        parts, last = [], None
        async for chunk in self.stream(api_key, inp, "cmpl-fixed"):
            parts.append(chunk.delta)
            last = chunk
        return Completion(request_id="cmpl-fixed", model=inp.model, text="".join(parts),
                          finish_reason=last.finish_reason, usage=last.usage)

    async def stream(self, api_key, inp, usage_id=None):
        self.calls.append((api_key, inp, usage_id))
        try:
            check_input(inp)
            if self.error is not None:
                raise self.error
            words = self.reply[: inp.max_tokens or len(self.reply)]
            for i, word in enumerate(words):
                if self.fail_after is not None and i == self.fail_after:
                    raise PermissionDenied("USAGE on the model was revoked")
                last = i == len(words) - 1
                text = ("" if i == 0 else " ") + word
                await asyncio.sleep(0)
                yield Chunk(text, "stop" if last else None,
                            Usage(5, len(words)) if last else None)
        finally:
            self.closed += 1


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


@dataclass
class FakeControl:
    """Control's public API for one key: tables, jobs, events; records what it was sent."""

    tables_by_db: dict = field(default_factory=dict)   # database -> [Table]
    jobs: dict = field(default_factory=dict)            # id -> FineTuningJob (newest last)
    events: dict = field(default_factory=dict)          # job id -> [JobEvent] (oldest first)
    loaded: list = field(default_factory=list)          # (table, rows)
    created: list = field(default_factory=list)         # CreateFineTuningJobRequest
    keys_seen: list = field(default_factory=list)
    page_size: int = 2                                  # small pages: paging is exercised

    def _check(self, key):
        self.keys_seen.append(key)
        if key != KEY:
            raise Unauthenticated("invalid API key")

    async def base_models(self, key):
        self._check(key)
        return [models_pb2.BaseModel(name=BASE, context_window=64)]

    async def models(self, key):
        self._check(key)
        return [models_pb2.Model(name=TUNED, base_model=BASE, created_on=ts(1700000000))]

    async def shared_models(self, key):
        self._check(key)
        return [models_pb2.Model(name=SHARED, base_model=BASE, created_on=ts(1700000500),
                                 owner_account="partner", shared=True)]

    async def get_model(self, key, name):
        self._check(key)
        if name == SHARED:
            return (await self.shared_models(key))[0]
        if name != TUNED:
            raise NotFound(f"model {name} does not exist")
        return (await self.models(key))[0]

    async def load_rows(self, key, table, rows):
        self._check(key)
        rows = list(rows)
        name = table if table.count(".") == 2 else "public." + table
        self.loaded.append((name, rows))
        columns = [data_pb2.Column(name=c, type="VARCHAR") for c in rows[0]]
        created = data_pb2.Table(name=name, columns=columns, row_count=len(rows), kind="TABLE")
        self.tables_by_db.setdefault(name.split(".")[0], []).append(created)
        return created

    async def tables(self, key, database):
        self._check(key)
        return list(self.tables_by_db.get(database, []))

    async def create_job(self, key, request):
        self._check(key)
        self.created.append(request)
        job = jobs_pb2.FineTuningJob(
            id=f"ft_{len(self.jobs) + 1}", status=jobs_pb2.PENDING, base_model=request.base_model,
            created_on=ts(1700000100 + len(self.jobs)), model=request.model,
            training_data=request.training_query, validation_data=request.validation_query,
            options=request.options)
        self.jobs[job.id] = job
        return job

    def _paged(self, items, token):
        start = int(token or 0)
        end = start + self.page_size
        return items[start:end], (str(end) if end < len(items) else "")

    async def list_jobs(self, key, page_size, page_token):
        self._check(key)
        jobs, token = self._paged(list(reversed(self.jobs.values())), page_token)
        return jobs_pb2.ListFineTuningJobsResponse(jobs=jobs, next_page_token=token)

    async def get_job(self, key, job_id):
        self._check(key)
        if job_id not in self.jobs:
            raise NotFound(f"job {job_id} does not exist")
        return self.jobs[job_id]

    async def cancel_job(self, key, job_id):
        job = await self.get_job(key, job_id)
        if job.status not in (jobs_pb2.PENDING, jobs_pb2.IN_PROGRESS):
            error = grpc.aio.AioRpcError(grpc.StatusCode.FAILED_PRECONDITION,
                                         grpc.aio.Metadata(), grpc.aio.Metadata(),
                                         f"job {job_id} is already finished")
            raise error
        job.status = jobs_pb2.CANCELLED
        return job

    async def job_events(self, key, job_id, page_size, page_token):
        await self.get_job(key, job_id)
        events, token = self._paged(list(reversed(self.events.get(job_id, []))), page_token)
        return jobs_pb2.ListFineTuningJobEventsResponse(events=events, next_page_token=token)


@dataclass
class Door:
    """The app with its fakes and its registry, and clients of it."""

    core: FakeCore
    control: FakeControl
    context: ApiContext
    registry: object
    app: object
    sampled: list

    def http(self, key: str | None = KEY) -> httpx2.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=self.app),
                                  base_url="http://door", headers=headers)

    def sdk(self, key: str = KEY) -> AsyncOpenAI:
        return AsyncOpenAI(base_url="http://door/v1", api_key=key, max_retries=0,
                           http_client=httpx2.AsyncClient(
                               transport=httpx2.ASGITransport(app=self.app)))


