"""Token accounting: usage comes from the token ids the engine saw and produced, never from text.

A finished request's record goes to a `UsageLedger` before its answer is returned; the ledger
(services.inference.outbox) keeps it durably and delivers it to control, which is idempotent on
the record's request_id, so a restart of either side loses no record and counts none twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.common.metrics import InferenceMetrics


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Answer:
    """What a request under the caller's own request_id answered, kept with its usage row so
    that a retry of that request (after a lost answer, a timeout, a restart) gets this answer
    again instead of a second generation and a second row."""

    request_id: str      # the caller's
    fingerprint: str     # of the request, without its ids: a reused id for another request
    text: str
    finish_reason: str


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    account_id: str
    user_id: str
    model: str
    base_model: str
    usage: Usage
    answer: Answer | None = None   # set when the caller named the request


@dataclass(frozen=True)
class KeptAnswer:
    """An Answer as the ledger returns it: with the id and tokens of the row it was billed in."""

    answer: Answer
    usage_id: str
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


class UsageLedger(Protocol):
    async def record(self, record: UsageRecord) -> None:
        """Keep the record (and its answer); on return it survives a crash of this process."""

    async def answered(self, account_id: str, request_id: str) -> KeptAnswer | None:
        """The answer kept for this account's request_id, if one is within the retention."""


class MeteredLedger:
    """A UsageLedger that also counts each record's tokens in the process's metrics. Counted
    where usage is recorded, so a completion counts once, whichever door it came through."""

    def __init__(self, inner: UsageLedger, metrics: InferenceMetrics):
        self._inner = inner
        self._metrics = metrics

    async def record(self, record: UsageRecord) -> None:
        await self._inner.record(record)
        self._metrics.count_usage(record.base_model, record.usage.prompt_tokens,
                                  record.usage.completion_tokens)

    async def answered(self, account_id: str, request_id: str) -> KeptAnswer | None:
        return await self._inner.answered(account_id, request_id)


class UsageRejected(Exception):
    """Control refused a record for good (malformed, or its account is gone): retrying is futile."""


class UsageReporter(Protocol):
    async def report(self, record: UsageRecord) -> None:
        """Deliver one record; raises UsageRejected for a permanent refusal, anything else for a
        failure worth retrying."""


# Answers that will be the same on every retry. UNAUTHENTICATED / PERMISSION_DENIED are not
# among them: a wrong service token is fixed by an operator, and the records must wait for that.
_PERMANENT = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION}


class GrpcUsageReporter:
    """Sends usage to control's ModelResolutionService.ReportUsage with the service token."""

    def __init__(self, channel: grpc.aio.Channel, service_token: str, timeout_s: float = 10.0):
        self._stub = internal_pb2_grpc.ModelResolutionServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {service_token}"),)
        self._timeout_s = timeout_s

    async def report(self, record: UsageRecord) -> None:
        try:
            await self._stub.ReportUsage(
                internal_pb2.ReportUsageRequest(
                    request_id=record.request_id, account_id=record.account_id,
                    user_id=record.user_id, model=record.model, base_model=record.base_model,
                    prompt_tokens=record.usage.prompt_tokens,
                    completion_tokens=record.usage.completion_tokens),
                metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _PERMANENT:
                raise UsageRejected(f"{exc.code().name}: {exc.details()}") from None
            raise
