"""RayJobDispatcher against a real local Ray (head + dashboard on free ports, its own temp dir,
stopped at the end). The "trainer" is a stand-in script, so only the dispatch path is tested."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from services.control.dispatch.protocol import ClusterJobStatus, ClusterUnavailable
from services.control.dispatch.ray_jobs import RayJobDispatcher
from services.control.domain.jobs import new_job_id

pytestmark = pytest.mark.integration

FAKE_TRAINER = """#!/bin/sh
case "$*" in
  *sleep*) sleep 600 ;;
  *fail*) echo "trainer exploded" >&2; exit 3 ;;
esac
echo "trainer ran: $* token=$FINETUNE_SERVICE_TOKEN"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_dashboard():
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix socket path limit
    dashboard_port = free_port()
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    ports = {name: free_port() for name in (
        "port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port")}
    command = [ray, "start", "--head", "--block", "--num-cpus=1", "--disable-usage-stats",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
               *[f"--{name}={port}" for name, port in ports.items()]]
    # Its own session, so the whole cluster stops with one signal to its process group
    # (never `ray stop`, which would stop every Ray on the machine).
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        from ray.job_submission import JobSubmissionClient
        deadline = time.monotonic() + 180  # a start guard, not an assertion on speed
        while True:
            try:
                JobSubmissionClient(address)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the local Ray head did not start")
                time.sleep(0.5)
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


@pytest.fixture(scope="module")
def dispatcher(ray_dashboard, tmp_path_factory):
    script = tmp_path_factory.mktemp("trainer") / "fake-python"
    script.write_text(FAKE_TRAINER)
    script.chmod(0o755)
    return RayJobDispatcher(ray_dashboard, python=str(script))


def wait_terminal(dispatcher, job_id):
    deadline = time.monotonic() + 180  # a hang guard
    while time.monotonic() < deadline:
        state = dispatcher.status(job_id)
        if state is not None and state.status in (ClusterJobStatus.SUCCEEDED,
                                                  ClusterJobStatus.FAILED,
                                                  ClusterJobStatus.STOPPED):
            return state
        time.sleep(0.5)
    pytest.fail(f"Ray job {job_id} did not finish")


def test_submit_runs_the_trainer_entrypoint_once(dispatcher):
    job_id = new_job_id()
    spec = f"file:///artifacts/jobs/{job_id}/spec.json"
    dispatcher.submit(job_id, spec, {"FINETUNE_SERVICE_TOKEN": "tok-123"})
    dispatcher.submit(job_id, spec, {"FINETUNE_SERVICE_TOKEN": "tok-123"})  # idempotent retry
    assert wait_terminal(dispatcher, job_id).status is ClusterJobStatus.SUCCEEDED
    logs = dispatcher.logs_tail(job_id)
    assert f"trainer ran: -m services.trainer.job --spec {spec} token=tok-123" in logs
    assert logs.count("trainer ran") == 1


def test_a_failing_trainer_is_failed_with_its_output(dispatcher):
    job_id = new_job_id()
    dispatcher.submit(job_id, "file:///fail/spec.json", {})
    state = wait_terminal(dispatcher, job_id)
    assert state.status is ClusterJobStatus.FAILED and state.message
    assert "trainer exploded" in dispatcher.logs_tail(job_id)


def test_stop_a_running_job(dispatcher):
    job_id = new_job_id()
    dispatcher.submit(job_id, "file:///sleep/spec.json", {})
    deadline = time.monotonic() + 180
    while dispatcher.status(job_id).status is not ClusterJobStatus.RUNNING:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    dispatcher.stop(job_id)
    assert wait_terminal(dispatcher, job_id).status is ClusterJobStatus.STOPPED


def test_unknown_jobs(dispatcher):
    assert dispatcher.status("ft_unknown") is None
    dispatcher.stop("ft_unknown")  # nothing to stop: not an error
    assert dispatcher.logs_tail("ft_unknown") == ""


def test_unreachable_cluster():
    down = RayJobDispatcher(f"http://127.0.0.1:{free_port()}", python=sys.executable)
    with pytest.raises(ClusterUnavailable):
        down.status("ft_x")
    with pytest.raises(ClusterUnavailable):
        down.submit("ft_x", "file:///x", {})
