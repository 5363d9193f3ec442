"""The JobDispatcher on the Ray Jobs API (the dashboard's HTTP endpoint)."""

from __future__ import annotations

import logging
import shlex
import threading
from typing import Any, Mapping, Sequence

from services.control.dispatch.protocol import (
    ClusterJob,
    ClusterJobStatus,
    ClusterUnavailable,
    DispatchError,
)

log = logging.getLogger(__name__)


def trainer_entrypoint(python: str, spec_uri: str) -> str:
    return shlex.join([python, "-m", "services.trainer.job", "--spec", spec_uri])


class RayJobDispatcher:
    """Blocking (JobSubmissionClient is a synchronous HTTP client): call from worker threads."""

    def __init__(self, address: str, python: str):
        self._address = address
        self._python = python
        self._client: Any = None   # a JobSubmissionClient, made on first use
        self._lock = threading.Lock()

    def _connect(self):
        # The client checks the cluster in its constructor, so it is created on first use
        # (control starts even while Ray is still coming up) and again after a failure.
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self._address)
                except (ConnectionError, RuntimeError, OSError) as exc:
                    raise ClusterUnavailable(f"Ray at {self._address}: {exc}") from exc
            return self._client

    def _call(self, what: str, fn):
        client = self._connect()
        try:
            return fn(client)
        except RuntimeError as exc:
            if "No available agent" in str(exc):  # a head still starting: try again later
                raise ClusterUnavailable(f"Ray {what}: {exc}") from exc
            raise DispatchError(f"Ray {what}: {exc}") from exc
        except OSError as exc:  # requests' errors are OSErrors: the dashboard is unreachable
            self._client = None
            raise ClusterUnavailable(f"Ray {what}: {exc}") from exc

    def submit(self, job_id: str, spec_uri: str, env: Mapping[str, str]) -> None:
        entrypoint = trainer_entrypoint(self._python, spec_uri)
        try:
            self._call("submit", lambda c: c.submit_job(
                entrypoint=entrypoint, submission_id=job_id,
                runtime_env={"env_vars": dict(env)}, metadata={"finetune_job_id": job_id}))
        except DispatchError as exc:
            if isinstance(exc, ClusterUnavailable) or "already exists" not in str(exc):
                raise
            log.info("job %s was already submitted to Ray", job_id)

    def status(self, job_id: str) -> ClusterJob | None:
        try:
            info = self._call("status", lambda c: c.get_job_info(job_id))
        except DispatchError as exc:
            if _not_found(exc):
                return None
            raise
        return ClusterJob(ClusterJobStatus(str(info.status)), info.message or "")

    def stop(self, job_id: str) -> None:
        try:
            self._call("stop", lambda c: c.stop_job(job_id))
        except DispatchError as exc:
            if not _not_found(exc) or isinstance(exc, ClusterUnavailable):
                raise

    def logs_tail(self, job_id: str, max_lines: int = 40) -> str:
        try:
            logs = self._call("logs", lambda c: c.get_job_logs(job_id))
        except DispatchError:
            return ""
        return _tail(logs.splitlines(), max_lines)


def _not_found(exc: DispatchError) -> bool:
    return not isinstance(exc, ClusterUnavailable) and (
        "404" in str(exc) or "does not exist" in str(exc))


def _tail(lines: Sequence[str], n: int) -> str:
    return "\n".join(lines[-n:])
