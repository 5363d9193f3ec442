"""A real control gRPC server on a loopback port, with a scriptable cluster behind the
JobDispatcher Protocol (the Ray dispatcher has its own test against a real local Ray)."""

from __future__ import annotations

import threading

import grpc
import pytest

from services.common.base_models import BaseModelSpec
from services.control.app import ControlApp, build_components
from services.control.config import load_config
from services.control.dispatch.protocol import ClusterJob, ClusterJobStatus

SERVICE_TOKEN = "integration-service-token"  # test_control_grpc.py presents the same value


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


@pytest.fixture
def cluster():
    return ScriptedCluster()


@pytest.fixture
def tiny_base(tmp_path) -> BaseModelSpec:
    folder = tmp_path / "tiny-base"
    folder.mkdir()
    return BaseModelSpec(name="tiny-base", source="path", path=folder, context_window=512,
                         prompt_tokens=384, completion_tokens=128, rows_per_epoch=100,
                         max_lora_rank=16, target_modules=("q_proj", "v_proj"), defaults={})


@pytest.fixture
async def control_server(tmp_path, cluster, tiny_base):
    config = load_config(["--home", str(tmp_path / "home"), "--port", "0",
                          "--reconcile-interval-s", "0.2"],
                         environ={"FINETUNE_SERVICE_TOKEN": SERVICE_TOKEN})
    app = ControlApp(build_components(config, dispatcher=cluster,
                                      base_models={tiny_base.name: tiny_base},
                                      provision=lambda spec: spec.path))
    await app.start()
    yield app
    await app.stop(0)


@pytest.fixture
def api_key(control_server) -> str:
    return control_server.components.config.bootstrap_key_file.read_text().strip()


@pytest.fixture
async def channel(control_server):
    async with grpc.aio.insecure_channel(control_server.address) as ch:
        yield ch
