"""Progress reports to control (JobReportingService.ReportProgress).

Reporting must never cost the training run: calls are rate-limited, have a short deadline, and
failures are logged and skipped (after a failure, non-forced reports pause for a while so an
unreachable control does not stall every step). A response saying `cancelled` is remembered and
read by the training loop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import grpc

from finetune.control.v1 import internal_pb2, internal_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    progress: float
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    trained_tokens: int = 0
    training_loss: float | None = None
    validation_loss: float | None = None
    message: str = ""


class ProgressSink(Protocol):
    @property
    def cancelled(self) -> bool: ...

    def report(self, update: Progress, force: bool = False) -> None: ...

    def close(self) -> None: ...


class NullReporter:
    """For runs without a control address."""

    cancelled = False

    def report(self, update: Progress, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


Send = Callable[[internal_pb2.ReportProgressRequest], internal_pb2.ReportProgressResponse]


class ProgressReporter:
    def __init__(self, job_id: str, send: Send, min_interval_s: float = 1.0,
                 backoff_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 close: Callable[[], None] = lambda: None):
        self._job_id = job_id
        self._send = send
        self._min_interval = min_interval_s
        self._backoff = backoff_s
        self._clock = clock
        self._close = close
        self._last_sent: float | None = None
        self._paused_until = float("-inf")
        self.cancelled = False

    def report(self, update: Progress, force: bool = False) -> None:
        """Send now if forced (epoch ends, the final result) or if the rate limit allows.

        A forced report does not open a rate-limit window: the step right after one (the
        first step after the precision note, say) still goes out, and with it a cancellation.
        """
        now = self._clock()
        if not force:
            if now < self._paused_until:
                return
            if self._last_sent is not None and now - self._last_sent < self._min_interval:
                return
            self._last_sent = now
        try:
            response = self._send(to_request(self._job_id, update))
        except Exception as exc:  # noqa: BLE001 - reporting must never stop training
            self._paused_until = now + self._backoff
            log.warning("progress report for %s failed (training goes on): %s", self._job_id,
                        _describe(exc))
            return
        if response.cancelled and not self.cancelled:
            log.info("control cancelled job %s", self._job_id)
            self.cancelled = True

    def close(self) -> None:
        self._close()


def to_request(job_id: str, update: Progress) -> internal_pb2.ReportProgressRequest:
    request = internal_pb2.ReportProgressRequest(
        job_id=job_id,
        progress=min(1.0, max(0.0, update.progress)),
        epoch=update.epoch,
        step=update.step,
        total_steps=update.total_steps,
        trained_tokens=update.trained_tokens,
        message=update.message,
    )
    if update.training_loss is not None:
        request.training_loss = update.training_loss
    if update.validation_loss is not None:
        request.validation_loss = update.validation_loss
        request.has_validation_loss = True
    return request


def connect(control_address: str, service_token: str, job_id: str,
            timeout_s: float = 5.0, **kwargs) -> ProgressSink:
    """A reporter over gRPC, or a NullReporter when there is no control address."""
    if not control_address:
        return NullReporter()
    channel = grpc.insecure_channel(control_address)
    stub = internal_pb2_grpc.JobReportingServiceStub(channel)
    metadata = (("authorization", f"Bearer {service_token}"),) if service_token else ()

    def send(request):
        return stub.ReportProgress(request, timeout=timeout_s, metadata=metadata)

    return ProgressReporter(job_id, send, close=channel.close, **kwargs)


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)
