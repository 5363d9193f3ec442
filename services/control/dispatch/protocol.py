"""What control needs from a cluster that runs training jobs. Ray implements it
(`ray_jobs.RayJobDispatcher`); unit tests use a fake. Methods block: call them off the event
loop."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping, Protocol


class ClusterJobStatus(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


@dataclass(frozen=True)
class ClusterJob:
    status: ClusterJobStatus
    message: str = ""


class DispatchError(Exception):
    """The cluster rejected a request."""


class ClusterUnavailable(DispatchError):
    """The cluster could not be reached; try again later."""


class JobDispatcher(Protocol):
    def submit(self, job_id: str, spec_uri: str, env: Mapping[str, str]) -> None:
        """Start the trainer for a job. Submitting a job id the cluster already has is a no-op,
        so a retry can never start a second run."""

    def status(self, job_id: str) -> ClusterJob | None:
        """The job's state on the cluster, or None if the cluster does not know it."""

    def stop(self, job_id: str) -> None:
        """Ask the cluster to stop the job (no-op if it is unknown or already finished)."""

    def logs_tail(self, job_id: str, max_lines: int = 40) -> str:
        """The last lines of the job's driver log ("" if unavailable)."""
