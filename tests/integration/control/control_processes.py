"""Real things for the control integration tests: a local Ray head, the control service itself
(`python -m services.control`, which the restart test kills and starts again), and base-model
folders holding a real tokenizer. (Imported by the tests and conftest.py; the module name is
unique across the test tree.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import wait_until

from finetune.control.v1 import jobs_pb2
from services.common.base_models import BaseModelSpec
from services.common.ports import free_port, free_ports  # noqa: F401 - free_port for the tests
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus


class ScriptedCluster:
    """Accepts submissions and reports whatever state the test sets."""

    def __init__(self):
        self.jobs: dict[str, ClusterJob] = {}
        self.submitted: list[str] = []
        self.stopped: list[str] = []
        self._lock = threading.Lock()

    def submit(self, job_id, spec_uri, env):
        with self._lock:
            self.submitted.append(job_id)
            self.jobs.setdefault(job_id, ClusterJob(ClusterJobStatus.PENDING))

    def status(self, job_id):
        return self.jobs.get(job_id)

    def stop(self, job_id):
        self.stopped.append(job_id)
        self.jobs[job_id] = ClusterJob(ClusterJobStatus.STOPPED)

    def logs_tail(self, job_id, max_lines=40):
        return ""


def with_tokenizer(folder, source_model: BaseModelSpec):
    """A base-model folder holding only the tokenizer of a real model: control counts tokens
    with it (the cluster here is scripted, so no weights are needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in source_model.path.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors"):
            shutil.copy(path, folder / path.name)
    return folder


# -- a local Ray head ----------------------------------------------------------------------------

@contextlib.contextmanager
def ray_head(num_cpus: int, dashboard_port: int | None = None):
    """A Ray head with a dashboard (Jobs API) on `dashboard_port` (or a free one) and free
    ports otherwise, in its own short temp dir; yields the dashboard address and stops the
    whole cluster (its process group) at the end, never with `ray stop`, which would stop
    every Ray on the machine."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix socket path limit
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    names = ("port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "dashboard-port")
    ports = dict(zip(names, free_ports(len(names))))
    if dashboard_port:
        ports["dashboard-port"] = dashboard_port
    dashboard_port = ports["dashboard-port"]
    command = [ray, "start", "--head", "--block", f"--num-cpus={num_cpus}",
               "--disable-usage-stats", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
               *[f"--{name}={port}" for name, port in ports.items()]]
    log_path = os.path.join(temp_dir, "head.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard_port}"

    def log_tail() -> str:
        with open(log_path, errors="replace") as log:
            return f"ray start said:\n{log.read()[-3000:]}"

    try:
        from ray.job_submission import JobSubmissionClient
        deadline = time.monotonic() + 180  # a start guard, not an assertion on speed

        def takes_a_job():
            try:
                # Up when it takes a job: the dashboard answers before its job agent is there.
                client = JobSubmissionClient(address)
                return client, client.submit_job(entrypoint="true")
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None:
                    pytest.fail(f"the local Ray head did not start; {log_tail()}")
                return None

        client, probe = wait_until(takes_a_job, 180, "the local Ray head to take a job",
                                   diagnose=log_tail)
        # the same start guard: what is left of the 180 s
        wait_until(lambda: _ray_status(client, probe) in RAY_TERMINAL,
                   round(max(deadline - time.monotonic(), 0.0), 1),
                   "the local Ray head to run its probe job", diagnose=log_tail)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # stragglers of the group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


RAY_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _ray_status(client, job_id: str) -> str:
    """A Ray job's status name (SUCCEEDED, not JobStatus.SUCCEEDED)."""
    return str(client.get_job_status(job_id)).rsplit(".", 1)[-1]


def wait_for_ray_job(client, job_id: str, limit_s: float = 900) -> str:
    """Poll the Jobs API until the Ray job ends; its status name. A hang guard (the job's log
    tail on a hang), not an assertion on speed."""
    def ended() -> str | None:
        status = _ray_status(client, job_id)
        return status if status in RAY_TERMINAL else None

    return wait_until(ended, limit_s, f"Ray job {job_id} to finish", every_s=1,
                      diagnose=lambda: f"logs:\n{client.get_job_logs(job_id)[-3000:]}")


class ControlProcess:
    """`python -m services.control` on a fixed port and home, started, killed and started
    again on the same ones."""

    def __init__(self, home: Path, port: int, ray_address: str, service_token: str,
                 *extra: str):
        self.home, self.port = home, port
        self.address = f"127.0.0.1:{port}"
        self.argv = [sys.executable, "-m", "services.control", "--host", "127.0.0.1",
                     "--port", str(port), "--home", str(home), "--ray-address", ray_address,
                     *extra]
        self.env = {**os.environ, "FINETUNE_SERVICE_TOKEN": service_token,
                    "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen | None = None
        self.log = home / "control.log"

    def start(self, timeout_s: float = 180) -> "ControlProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                if self.proc.poll() is not None:
                    pytest.fail(f"control exited: {self.log.read_text()[-3000:]}")
                try:
                    return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    return False

            # a start guard, not an assertion on speed
            wait_until(serving, timeout_s, "control to start (SERVING)", every_s=0.3,
                       diagnose=lambda: f"control said:\n{self.log.read_text()[-3000:]}")
        return self

    def kill(self) -> None:
        """SIGKILL: no graceful stop, nothing flushed, as a crash would leave it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


JOB_TERMINAL = {"SUCCESS", "ERROR", "CANCELLED"}


def job_status(job) -> str:
    return jobs_pb2.JobStatus.Name(job.status)


def wait_for_job(client, job_id: str, done, what: str, timeout_s: float = 900,
                 diagnose=lambda job: "", seen: list | None = None, every_s: float = 0.5):
    """Poll DESCRIBE (through a FinetuneClient) until `done(job)` and return that job, noting
    each one seen in `seen`; a hang guard, not a timing assertion. A job that ends first fails
    at once; a control that is down (UNAVAILABLE) is waited for. `diagnose(last job)` says what
    the job, control and Ray last showed, on a hang or an early end."""
    last = None

    def reached():
        nonlocal last
        try:
            job = last = client.get_job(job_id)
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            return None
        if seen is not None:
            seen.append(job)
        if done(job):
            return job
        if job_status(job) in JOB_TERMINAL:
            pytest.fail(f"job {job_id} ended {job_status(job)} before {what}: "
                        f"{job.error.code} {job.error.message}\n{diagnose(job)}")
        return None

    return wait_until(reached, timeout_s, f"job {job_id} to reach {what}", every_s=every_s,
                      diagnose=lambda: diagnose(last))

