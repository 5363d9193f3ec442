"""Control's metrics: its RPCs, jobs by state (read from the metadata DB at each scrape) and
each running job's training throughput (from the progress reports the trainer sends)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from services.common.metrics import (
    JobMetrics,
    JobStates,
    RpcMetrics,
    TrainingThroughput,
    new_registry,
)
from services.control.api.internal import ProgressRecorder
from services.control.domain.jobs import JobProgress, JobStatus
from services.control.store.database import Store, Tx


class MeteredProgress:
    """The progress-report use case, with each accepted report's trained tokens fed to the
    throughput metric."""

    def __init__(self, jobs: ProgressRecorder, throughput: TrainingThroughput):
        self._jobs = jobs
        self._throughput = throughput

    def report_progress(self, job_id: str, progress: JobProgress) -> bool:
        cancelled = self._jobs.report_progress(job_id, progress)
        if not cancelled:
            self._throughput.report(job_id, progress.trained_tokens)
        return cancelled


def read_job_states(store: Store) -> JobStates:
    def work(tx: Tx) -> JobStates:
        counts = tx.jobs.count_by_status()
        running = {job.id: job.base_model for job in tx.jobs.active()
                   if job.status is JobStatus.IN_PROGRESS}
        return JobStates({status.value: n for status, n in counts.items()}, running)
    return store.run(work)


@dataclass(frozen=True)
class ControlMetrics:
    registry: CollectorRegistry
    rpc: RpcMetrics
    throughput: TrainingThroughput


def control_metrics(store: Store) -> ControlMetrics:
    """A registry of control's own, with its job metrics registered on it."""
    registry = new_registry()
    throughput = TrainingThroughput()
    registry.register(JobMetrics(lambda: read_job_states(store),
                                 [s.value for s in JobStatus], throughput))
    return ControlMetrics(registry, RpcMetrics(registry), throughput)
