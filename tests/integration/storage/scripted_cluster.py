"""A JobDispatcher that runs nothing: the tests say what state each job is in."""

from __future__ import annotations

import threading

from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus


class ScriptedCluster:
    """Accepts submissions and reports whatever state the test sets (no Ray here)."""

    def __init__(self):
        self.jobs: dict[str, ClusterJob] = {}
        self.submitted: list[str] = []
        self._lock = threading.Lock()

    def submit(self, job_id, spec_uri, env):
        with self._lock:
            self.submitted.append(job_id)
            self.jobs.setdefault(job_id, ClusterJob(ClusterJobStatus.PENDING))

    def status(self, job_id):
        return self.jobs.get(job_id)

    def stop(self, job_id):
        self.jobs[job_id] = ClusterJob(ClusterJobStatus.STOPPED)

    def logs_tail(self, job_id, max_lines=40):
        return ""
