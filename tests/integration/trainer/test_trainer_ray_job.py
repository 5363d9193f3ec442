"""The trainer as control runs it: a Ray job (Jobs API) on a real local Ray cluster, 2 CPU workers,
the default base model, progress reported to a real gRPC JobReportingService on loopback."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from control_processes import ray_head, wait_for_ray_job
from mounts import small_tmpfs
from polling import wait_until

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.common.artifacts import ArtifactStore
from services.common.ports import free_port

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "trainer-test-token"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head with 2 CPUs and a dashboard (Jobs API) on free ports, in its own temp dir."""
    from ray.job_submission import JobSubmissionClient

    with ray_head(num_cpus=2) as address:
        yield JobSubmissionClient(address), address


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


@contextlib.contextmanager
def reporting_server():
    servicer = RecordingReporting()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    internal_pb2_grpc.add_JobReportingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture
def control():
    with reporting_server() as (servicer, address):
        yield servicer, address


def made_up_rows() -> list[dict]:
    """16 prompt -> code pairs: 4 made-up warehouse codes, keyed by the kind of item named.

    A code starts with its kind's first letters, so the model can tell the codes apart from the
    first token on (4 unrelated codes for 4 kinds made a model answer one code for every
    prompt for a long time first); the numbers are made up, so only training can produce them.
    """
    rnd = random.Random(7)
    kinds = {"fruit": ["apple", "banana", "cherry", "mango"],
             "tool": ["hammer", "wrench", "drill", "chisel"],
             "furniture": ["chair", "table", "sofa", "desk"],
             "fabric": ["cotton", "silk", "wool", "linen"]}
    rows = []
    for kind, items in kinds.items():
        label = kind[:3].upper() + "-" + "".join(rnd.choice("0123456789") for _ in range(4))
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


def submit(client, job_id: str, spec_uri: str, **env: str) -> None:
    """As control's dispatcher does: submission_id = job id, the service token in env_vars."""
    client.submit_job(entrypoint=f"{sys.executable} -m services.trainer.job --spec {spec_uri}",
                      submission_id=job_id,
                      runtime_env={"env_vars": {"FINETUNE_SERVICE_TOKEN": SERVICE_TOKEN,
                                                **env}})


def wait(client, job_id: str, limit_s: float = 900) -> str:
    return wait_for_ray_job(client, job_id, limit_s)


def read_csv(store: ArtifactStore, uri: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(store.read_bytes(uri).decode())))


TRAINED_OPTIONS = {"batch_size": 2, "max_epochs": 4}   # 8 steps an epoch, 32 in all


@pytest.fixture(scope="module")
def trained(ray_cluster, base_model_spec, tmp_path_factory):
    """One uninterrupted run: checked by the next test, and the reference curve of the
    resume test. Progress goes to a control of its own (the `control` fixture is per test)."""
    client, _ = ray_cluster
    with reporting_server() as (servicer, address):
        rows = made_up_rows()
        # 32 steps of 2 rows: every code right with loss near 0.005 (in-process trials with
        # two seeds), well before the end.
        store, spec, spec_uri = write_job(tmp_path_factory.mktemp("trained") / "artifacts",
                                          "ft_train", base_model_spec, address, rows, rows[:4],
                                          **TRAINED_OPTIONS)
        submit(client, "ft_train", spec_uri)
        status = wait(client, "ft_train")
        logs = client.get_job_logs("ft_train")
    assert status == "SUCCEEDED", logs[-4000:]
    return store, spec, rows, list(servicer.requests)


def test_job_trains_exports_and_reports(trained, base_model_spec):
    store, spec, rows, reports = trained
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
    # The exported adapter is the epoch with the lowest validation loss; no early stopping.
    validation = [float(r["validation_loss"]) for r in results if r["validation_loss"]]
    assert manifest["best_epoch"] == 1 + validation.index(min(validation))
    assert manifest["validation_loss"] == pytest.approx(min(validation), rel=1e-4, abs=1e-6)
    assert manifest["stop_reason"] is None
    # auto precision: the workers measured bf16 against fp32 here (or reused what an earlier
    # run measured) and said so in a progress message; the manifest names the dtype.
    note = next(r.message for r in reports if r.message.startswith("training precision"))
    assert manifest["precision"] in ("fp32", "bf16")
    assert note.startswith(f"training precision {manifest['precision']} "), note

    # Progress reached control, authenticated, with validation at epoch ends and 1.0 at the end.
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


def test_a_full_artifact_store_fails_the_job_with_a_clear_message(ray_cluster, control,
                                                                 base_model_spec, tmp_path):
    """The job's artifact store is a real tmpfs with room for its spec and data but not for a
    checkpoint: the job fails (after its one allowed restart) saying the store is full, and
    what was there before is intact, with no half-exported model beside it."""
    client, _ = ray_cluster
    _, address = control
    with small_tmpfs(tmp_path / "artifacts", "512k") as root:
        store, spec, spec_uri = write_job(root, "ft_full", base_model_spec, address,
                                          made_up_rows(), [], batch_size=2, max_epochs=1,
                                          checkpoint_every_steps=2)
        before = {uri: store.read_bytes(uri) for uri in (spec_uri, spec["training_data_uri"])}
        submit(client, "ft_full", spec_uri, FINETUNE_TRAINER_MAX_FAILURES="1")
        status = wait(client, "ft_full")
        logs = client.get_job_logs("ft_full")
        assert status == "FAILED", logs[-4000:]
        reason = [line for line in logs.splitlines() if "fine-tuning failed:" in line][-1:]
        assert reason and "the artifact store is full (No space left on device)" in reason[0], \
            logs[-4000:]
        assert {uri: store.read_bytes(uri) for uri in before} == before
        assert not store.exists(f"{spec['output_uri']}/manifest.json")
        assert not store.exists(f"{spec['output_uri']}/adapter_model.safetensors")


def latest_checkpoint(store: ArtifactStore, spec: dict, job_id: str) -> Path | None:
    """The folder of the checkpoint Ray Train has registered last, if any."""
    run = store.local_path(spec["checkpoint_uri"]) / job_id
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):   # not yet, or being rewritten
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    return run / latest["checkpoint_dir_name"] if latest.get("checkpoint_dir_name") else None


def latest_checkpoint_state(store: ArtifactStore, spec: dict, job_id: str) -> dict | None:
    folder = latest_checkpoint(store, spec, job_id)
    if folder is None:
        return None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        return json.loads((folder / "state.json").read_text())
    return None


def test_a_worker_killed_mid_epoch_resumes_from_the_step_checkpoint(
        trained, ray_cluster, control, base_model_spec, tmp_path):
    """The reference run's job again; a worker is SIGKILLed once a mid-epoch checkpoint exists
    (every 2 steps of an 8-step epoch by default, so the kill lands before the epoch's end even
    if it takes a few steps). The resumed run trains each step once, in the same order, and its
    loss curve matches the uninterrupted run's."""
    client, dashboard = ray_cluster
    _, address = control
    ref_store, ref_spec, rows, _ = trained
    store, spec, spec_uri = write_job(tmp_path / "artifacts", "ft_resume", base_model_spec,
                                      address, rows, rows[:4], **TRAINED_OPTIONS)
    submit(client, "ft_resume", spec_uri)

    from ray.util.state import list_actors

    def checkpointed():
        found = latest_checkpoint_state(store, spec, "ft_resume")
        if found is None:
            status = str(client.get_job_status("ft_resume")).rsplit(".", 1)[-1]
            assert status not in TERMINAL, client.get_job_logs("ft_resume")[-4000:]
        return found

    state = wait_until(checkpointed, 600,  # a hang guard, not an assertion on speed
                       "a checkpoint of ft_resume", every_s=0.1,
                       diagnose=lambda: client.get_job_logs("ft_resume")[-4000:])
    assert state["epoch_step"] > 0          # a step checkpoint, not an epoch end
    workers = list_actors(address=dashboard, filters=[("class_name", "=", "RayTrainWorker"),
                                                      ("state", "=", "ALIVE")])
    assert len(workers) == 2
    os.kill(workers[-1]["pid"], signal.SIGKILL)

    status = wait(client, "ft_resume")
    logs = client.get_job_logs("ft_resume")
    assert status == "SUCCEEDED", logs[-4000:]
    resumed = re.findall(r"resuming ft_resume after epoch (\d+), step (\d+) \((\d+) steps into",
                         logs)
    assert resumed and int(resumed[0][2]) > 0, logs[-4000:]    # mid-epoch
    assert int(resumed[0][1]) >= state["step"]

    results = read_csv(store, f"{spec['output_uri']}/training_results.csv")
    reference = read_csv(ref_store, f"{ref_spec['output_uri']}/training_results.csv")
    assert [int(r["step"]) for r in results] == list(range(1, 33))     # each step once
    assert [r["epoch"] for r in results] == [r["epoch"] for r in reference]
    for ours, theirs in zip(results, reference):
        assert float(ours["training_loss"]) == pytest.approx(float(theirs["training_loss"]),
                                                             rel=1e-3, abs=1e-4)
    manifest = json.loads(store.read_bytes(f"{spec['output_uri']}/manifest.json"))
    ref_manifest = json.loads(ref_store.read_bytes(f"{ref_spec['output_uri']}/manifest.json"))
    assert (manifest["epochs"], manifest["steps"]) == (4, 32)
    assert manifest["trained_tokens"] == ref_manifest["trained_tokens"]
    assert manifest["best_epoch"] == ref_manifest["best_epoch"]


def test_early_stopping_exports_the_best_epoch(ray_cluster, control, base_model_spec,
                                               tmp_path):
    """Validation rows give trained prompts other kinds' codes: validation loss falls while the
    model learns what codes look like, then rises as it learns which prompt gets which code."""
    client, _ = ray_cluster
    reporting, address = control
    rows = made_up_rows()
    codes = sorted({r["completion"] for r in rows})
    wrong = [{"prompt": r["prompt"], "completion": codes[(codes.index(r["completion"]) + 1) % 4]}
             for r in rows[:4]]
    store, spec, spec_uri = write_job(tmp_path / "artifacts", "ft_early", base_model_spec,
                                      address, rows, wrong, batch_size=2, max_epochs=8,
                                      early_stopping_patience=1, checkpoint_every_steps=100)
    submit(client, "ft_early", spec_uri)
    status = wait(client, "ft_early")
    logs = client.get_job_logs("ft_early")
    assert status == "SUCCEEDED", logs[-4000:]

    out = spec["output_uri"]
    manifest = json.loads(store.read_bytes(f"{out}/manifest.json"))
    results = read_csv(store, f"{out}/training_results.csv")
    validation = [float(r["validation_loss"]) for r in results if r["validation_loss"]]
    epochs = manifest["epochs"]
    assert manifest["stop_reason"] and "early stopping" in manifest["stop_reason"], logs[-3000:]
    assert epochs < 8 and len(validation) == epochs
    # ... and control heard it with the last epoch's report, so the job's events say why.
    with reporting.lock:
        said = [r.message for r in reporting.requests
                if r.job_id == "ft_early" and "early stopping" in r.message]
    assert said == [f"epoch {epochs} of 8 done; {manifest['stop_reason']}"]
    assert manifest["best_epoch"] == epochs - 1 == 1 + validation.index(min(validation))
    assert manifest["validation_loss"] == pytest.approx(min(validation), rel=1e-4, abs=1e-6)
    # Every step trained is listed; trained tokens count the epochs actually run.
    assert [int(r["step"]) for r in results] == list(range(1, 8 * epochs + 1))
    from transformers import AutoTokenizer

    from services.trainer.data import TokenLimits, format_rows
    tokenizer = AutoTokenizer.from_pretrained(base_model_spec.path)
    limits = TokenLimits(base_model_spec.prompt_tokens, base_model_spec.completion_tokens,
                         base_model_spec.context_window)
    assert manifest["trained_tokens"] == epochs * format_rows("INSTRUCTION", tokenizer, rows,
                                                              limits).tokens
    assert reporting.requests[-1].trained_tokens == manifest["trained_tokens"]
    # The exported adapter is the best epoch's, not the last step's.
    from safetensors.torch import load_file
    exported = load_file(str(store.local_path(out) / "adapter_model.safetensors"))
    final_checkpoint = latest_checkpoint(store, spec, "ft_early")
    assert json.loads((final_checkpoint / "state.json").read_text())["step"] == 8 * epochs
    final = load_file(str(final_checkpoint / "adapter" / "adapter_model.safetensors"))
    assert exported.keys() == final.keys()
    assert any(not torch_equal(exported[k], final[k]) for k in exported)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_an_unreachable_control_never_fails_reporting():
    from services.trainer.reporting import Progress, connect

    reporter = connect(f"127.0.0.1:{free_port()}", SERVICE_TOKEN, "ft_nowhere", timeout_s=0.5)
    try:
        reporter.report(Progress(0.5), force=True)
        reporter.report(Progress(0.6), force=True)
    finally:
        reporter.close()
    assert reporter.cancelled is False
