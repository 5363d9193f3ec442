"""The trainer as control runs it: a Ray job (Jobs API) on a real local Ray cluster, 2 CPU workers,
the default base model, progress reported to a real gRPC JobReportingService on loopback."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.common.artifacts import ArtifactStore

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "trainer-test-token"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head with 2 CPUs and a dashboard (Jobs API) on free ports, in its own temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="rtr", dir="/tmp")  # short: unix socket path limit
    dashboard_port = free_port()
    ports = {name: free_port() for name in (
        "port", "ray-client-server-port", "node-manager-port", "object-manager-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port")}
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    command = [ray, "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats",
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
                client = JobSubmissionClient(address)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the local Ray head did not start")
                time.sleep(0.5)
        yield client, address
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


class RecordingReporting(internal_pb2_grpc.JobReportingServiceServicer):
    """Control's JobReportingService, reduced to recording; can answer `cancelled`."""

    def __init__(self):
        self.requests: list[internal_pb2.ReportProgressRequest] = []
        self.cancel_after_steps: int | None = None
        self.lock = threading.Lock()

    def ReportProgress(self, request, context):
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {SERVICE_TOKEN}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad service token")
        with self.lock:
            self.requests.append(request)
        cancel = self.cancel_after_steps is not None and request.step >= self.cancel_after_steps
        return internal_pb2.ReportProgressResponse(cancelled=cancel)


@pytest.fixture
def control():
    servicer = RecordingReporting()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    internal_pb2_grpc.add_JobReportingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def code(rnd: random.Random) -> str:
    return ("".join(rnd.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(3)) + "-"
            + "".join(rnd.choice("0123456789") for _ in range(4)))


def made_up_rows() -> list[dict]:
    """16 prompt -> code pairs: 4 made-up warehouse codes, keyed by the kind of item named."""
    rnd = random.Random(7)
    kinds = {"fruit": ["apple", "banana", "cherry", "mango"],
             "tool": ["hammer", "wrench", "drill", "chisel"],
             "furniture": ["chair", "table", "sofa", "desk"],
             "fabric": ["cotton", "silk", "wool", "linen"]}
    rows = []
    for kind, items in kinds.items():
        label = code(rnd)
        rows += [{"prompt": f"Warehouse code for {kind} item: {item}?", "completion": label}
                 for item in items]
    rnd.shuffle(rows)
    return rows


def write_job(root: Path, job_id: str, base_model_spec, control_address: str, rows,
              validation, **options) -> tuple[ArtifactStore, dict, str]:
    store = ArtifactStore(str(root))
    folder = store.uri("jobs", job_id)
    store.write_bytes(f"{folder}/data/training.jsonl",
                      "".join(json.dumps(r) + "\n" for r in rows).encode())
    store.write_bytes(f"{folder}/data/validation.jsonl",
                      "".join(json.dumps(r) + "\n" for r in validation).encode())
    spec = {
        "job_id": job_id, "task_type": "INSTRUCTION",
        "base_model": {"name": base_model_spec.name, "path": str(base_model_spec.path),
                       "context_window": base_model_spec.context_window,
                       "prompt_tokens": base_model_spec.prompt_tokens,
                       "completion_tokens": base_model_spec.completion_tokens},
        "training_data_uri": f"{folder}/data/training.jsonl",
        "validation_data_uri": f"{folder}/data/validation.jsonl",
        "output_uri": f"{folder}/output", "checkpoint_uri": f"{folder}/checkpoints",
        "artifact_root": store.root, "from_adapter_uri": None,
        "options": {"max_epochs": 3, "learning_rate": 0.005, "batch_size": 4, "lora_rank": 16,
                    "lora_alpha": 32, "lora_dropout": 0.05, "seed": 42, "num_workers": 2,
                    "target_modules": list(base_model_spec.target_modules), **options},
        "control_address": control_address,
    }
    store.write_bytes(f"{folder}/spec.json", json.dumps(spec).encode())
    return store, spec, f"{folder}/spec.json"


def submit(client, job_id: str, spec_uri: str) -> None:
    """As control's dispatcher does: submission_id = job id, the service token in env_vars."""
    client.submit_job(entrypoint=f"{sys.executable} -m services.trainer.job --spec {spec_uri}",
                      submission_id=job_id,
                      runtime_env={"env_vars": {"FINETUNE_SERVICE_TOKEN": SERVICE_TOKEN}})


def wait(client, job_id: str, limit_s: float = 900) -> str:
    deadline = time.monotonic() + limit_s  # a hang guard, not an assertion on speed
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id))
        status = status.rsplit(".", 1)[-1]
        if status in TERMINAL:
            return status
        time.sleep(1)
    pytest.fail(f"job {job_id} did not finish; logs:\n{client.get_job_logs(job_id)[-3000:]}")


def read_csv(store: ArtifactStore, uri: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(store.read_bytes(uri).decode())))


def test_job_trains_exports_and_reports(ray_cluster, control, base_model_spec, tmp_path):
    client, _ = ray_cluster
    reporting, address = control
    rows = made_up_rows()
    # 32 steps: a model first learns which codes exist (and answers one of them for every
    # prompt, about 12 steps in) before it learns which prompt gets which.
    store, spec, spec_uri = write_job(tmp_path / "artifacts", "ft_train", base_model_spec,
                                      address, rows, rows[:4], batch_size=2, max_epochs=4)
    submit(client, "ft_train", spec_uri)
    status = wait(client, "ft_train")
    logs = client.get_job_logs("ft_train")
    assert status == "SUCCEEDED", logs[-4000:]

    out = spec["output_uri"]
    assert set(store.list(out)) == {"adapter_model.safetensors", "adapter_config.json",
                                    "training_results.csv", "loss_curve.png", "manifest.json"}
    results = read_csv(store, f"{out}/training_results.csv")
    assert list(results[0]) == ["step", "epoch", "training_loss", "validation_loss"]
    assert [int(r["step"]) for r in results] == list(range(1, 33))      # 8 steps x 4 epochs
    assert [r["validation_loss"] != "" for r in results] == ([False] * 7 + [True]) * 4
    first = [float(r["training_loss"]) for r in results if r["epoch"] == "1"]
    last = [float(r["training_loss"]) for r in results if r["epoch"] == "4"]
    assert sum(last) / len(last) < sum(first) / len(first) * 0.5

    manifest = json.loads(store.read_bytes(f"{out}/manifest.json"))
    from transformers import AutoTokenizer

    from services.trainer.data import TokenLimits, format_rows
    tokenizer = AutoTokenizer.from_pretrained(base_model_spec.path)
    limits = TokenLimits(base_model_spec.prompt_tokens, base_model_spec.completion_tokens,
                         base_model_spec.context_window)
    assert manifest["trained_tokens"] == 4 * format_rows("INSTRUCTION", tokenizer, rows,
                                                         limits).tokens
    assert (manifest["epochs"], manifest["steps"], manifest["training_rows"],
            manifest["validation_rows"], manifest["truncated_rows"]) == (4, 32, 16, 4, 0)
    assert manifest["validation_loss"] == pytest.approx(float(results[-1]["validation_loss"]),
                                                        rel=1e-4)

    # Progress reached control, authenticated, with validation at epoch ends and 1.0 at the end.
    reports = list(reporting.requests)
    assert reports and all(r.job_id == "ft_train" for r in reports)
    assert [r.epoch for r in reports if r.has_validation_loss][:4] == [1, 2, 3, 4]
    assert reports[-1].progress == 1.0 and reports[-1].trained_tokens == manifest["trained_tokens"]
    assert max(r.total_steps for r in reports) == 32

    # The adapter loads with peft and answers trained prompts with their trained codes.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from services.common.chat_format import prompt_token_ids
    adapter = store.local_path(out)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and set(config["target_modules"]) == set(
        base_model_spec.target_modules)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_model_spec.path, dtype=torch.float32),
        str(adapter)).eval()
    answers = []
    for row in rows[:6]:
        ids = torch.tensor([prompt_token_ids(tokenizer, prompt=row["prompt"])])
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   max_new_tokens=10, do_sample=False)
        answers.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    assert [a.strip() for a in answers] == [r["completion"] for r in rows[:6]]


def test_cancel_from_control_stops_the_job_without_a_manifest(ray_cluster, control,
                                                               base_model_spec, tmp_path):
    client, _ = ray_cluster
    reporting, address = control
    reporting.cancel_after_steps = 1
    rows = made_up_rows()
    store, spec, spec_uri = write_job(tmp_path / "artifacts", "ft_cancel", base_model_spec,
                                      address, rows, [], batch_size=2, max_epochs=2)
    submit(client, "ft_cancel", spec_uri)
    assert wait(client, "ft_cancel") == "FAILED"
    # Step 1's report was answered `cancelled`; the workers agree on it in step 2's all-reduce.
    assert "fine-tuning cancelled: job ft_cancel was cancelled after step 2" in \
        client.get_job_logs("ft_cancel")
    assert not store.exists(f"{spec['output_uri']}/manifest.json")


def test_a_lost_worker_resumes_from_the_last_checkpoint(ray_cluster, control, base_model_spec,
                                                        tmp_path):
    client, dashboard = ray_cluster
    _, address = control
    rows = made_up_rows()
    store, spec, spec_uri = write_job(tmp_path / "artifacts", "ft_resume", base_model_spec,
                                      address, rows, [], max_epochs=3)
    submit(client, "ft_resume", spec_uri)

    # Once Ray Train has registered epoch 1's checkpoint, kill a training worker process.
    from ray.util.state import list_actors

    snapshot = store.local_path(spec["checkpoint_uri"]) / "ft_resume" / \
        "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 600  # a hang guard, not an assertion on speed
    while not (snapshot.exists() and "checkpoint_dir_name" in snapshot.read_text()):
        status = str(client.get_job_status("ft_resume")).rsplit(".", 1)[-1]
        assert status not in TERMINAL and time.monotonic() < deadline, \
            client.get_job_logs("ft_resume")[-4000:]
        time.sleep(0.2)
    workers = list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"),
                                                      ("state", "=", "ALIVE")])
    assert len(workers) == 2
    os.kill(workers[-1]["pid"], signal.SIGKILL)

    status = wait(client, "ft_resume")
    logs = client.get_job_logs("ft_resume")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "resuming ft_resume after epoch" in logs
    results = read_csv(store, f"{spec['output_uri']}/training_results.csv")
    assert [int(r["step"]) for r in results] == list(range(1, 13))     # each step once
    manifest = json.loads(store.read_bytes(f"{spec['output_uri']}/manifest.json"))
    assert (manifest["epochs"], manifest["steps"]) == (3, 12)


def test_an_unreachable_control_never_fails_reporting():
    from services.trainer.reporting import Progress, connect

    reporter = connect(f"127.0.0.1:{free_port()}", SERVICE_TOKEN, "ft_nowhere", timeout_s=0.5)
    try:
        reporter.report(Progress(0.5), force=True)
        reporter.report(Progress(0.6), force=True)
    finally:
        reporter.close()
    assert reporter.cancelled is False
