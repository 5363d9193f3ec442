"""Token accounting: usage comes from the token ids the engine saw and produced, never from text.

Reporting to control is best effort for now (logged on failure). A durable outbox, so that a
restart of either side loses no record and counts none twice, is a later issue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

import grpc

from finetune.control.v1 import internal_pb2, internal_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    account_id: str
    user_id: str
    model: str
    base_model: str
    usage: Usage


class UsageCounter:
    """Counts one request's tokens as the engine's deltas arrive."""

    def __init__(self, prompt_token_count: int):
        self.prompt_tokens = prompt_token_count
        self.completion_tokens = 0

    def add(self, prompt_token_count: int, new_token_ids) -> None:
        self.prompt_tokens = prompt_token_count  # what the engine saw is what counts
        self.completion_tokens += len(new_token_ids)

    @property
    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens)


class UsageReporter(Protocol):
    async def report(self, record: UsageRecord) -> None: ...


class GrpcUsageReporter:
    """Sends usage to control's ModelResolutionService.ReportUsage with the service token."""

    def __init__(self, channel: grpc.aio.Channel, service_token: str, timeout_s: float = 10.0):
        self._stub = internal_pb2_grpc.ModelResolutionServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {service_token}"),)
        self._timeout_s = timeout_s

    async def report(self, record: UsageRecord) -> None:
        await self._stub.ReportUsage(
            internal_pb2.ReportUsageRequest(
                request_id=record.request_id, account_id=record.account_id,
                user_id=record.user_id, model=record.model, base_model=record.base_model,
                prompt_tokens=record.usage.prompt_tokens,
                completion_tokens=record.usage.completion_tokens),
            metadata=self._metadata, timeout=self._timeout_s)


class BackgroundUsageSender:
    """Reports usage off the request path; failures are logged, never surfaced to the caller."""

    def __init__(self, reporter: UsageReporter):
        self._reporter = reporter
        self._pending: set[asyncio.Task] = set()

    def submit(self, record: UsageRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._send(record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, record: UsageRecord) -> None:
        try:
            await self._reporter.report(record)
        except asyncio.CancelledError:
            log.warning("usage report for %s cancelled: %s", record.request_id, record)
            raise
        except Exception as exc:  # noqa: BLE001 - best effort until the durable outbox exists
            log.warning("usage report for %s failed: %r; lost record: %s", record.request_id,
                        exc, record)

    async def drain(self) -> None:
        """Wait for the reports in flight (at shutdown, after the server stopped taking calls)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
