"""RayJobDispatcher against a real local Ray (head + dashboard on free ports, its own temp dir,
stopped at the end). The "trainer" is a stand-in script, so only the dispatch path is tested."""

import sys

import pytest
from control_processes import free_port, ray_head
from polling import wait_until

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


@pytest.fixture(scope="module")
def ray_dashboard():
    with ray_head(num_cpus=1) as address:
        yield address


@pytest.fixture(scope="module")
def dispatcher(ray_dashboard, tmp_path_factory):
    script = tmp_path_factory.mktemp("trainer") / "fake-python"
    script.write_text(FAKE_TRAINER)
    script.chmod(0o755)
    return RayJobDispatcher(ray_dashboard, python=str(script))


TERMINAL = (ClusterJobStatus.SUCCEEDED, ClusterJobStatus.FAILED, ClusterJobStatus.STOPPED)


def job_diagnosis(dispatcher, job_id):
    return lambda: (f"last state: {dispatcher.status(job_id)}; logs:\n"
                    f"{dispatcher.logs_tail(job_id)}")


def wait_terminal(dispatcher, job_id):
    def ended():
        state = dispatcher.status(job_id)
        return state if state is not None and state.status in TERMINAL else None

    return wait_until(ended, 180, f"Ray job {job_id} to finish",  # a hang guard
                      diagnose=job_diagnosis(dispatcher, job_id))


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
    wait_until(lambda: dispatcher.status(job_id).status is ClusterJobStatus.RUNNING, 180,
               f"Ray job {job_id} to start RUNNING", diagnose=job_diagnosis(dispatcher, job_id))
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
