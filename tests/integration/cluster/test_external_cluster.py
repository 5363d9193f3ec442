"""Control in front of an external, multi-node Ray cluster (issue 12, "Beyond one machine",
item 4): a head with no CPUs and worker nodes that join it with `ray start --address`, all on
this machine over loopback, each in its own temp dir; control started with `--ray-address`,
PostgreSQL metadata and S3 artifacts (see conftest.py).

- A job's training workers run on the worker node (Ray's state API), its driver and Ray Train's
  controller on the head; control started no Ray of its own; the adapter, checkpoints and
  outputs are in the bucket, and an inference-side adapter fetch that reads only the bucket
  validates the adapter.
- The worker node is killed mid-training and a replacement joins: Ray Train restarts the worker
  group there from the last checkpoint (the trainer's default max_failures, 2), the job ends
  SUCCESS with each step trained once and the trained tokens of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re

import grpc
import psutil
import pytest
from cluster_processes import (
    SERVICE_TOKEN,
    discard_worker_node,
    nodes,
    ray_daemons,
    ray_worker_node,
    start_worker_node,
)
from control_processes import wait_for_job
from polling import wait_until

from finetune.control.v1 import internal_pb2, internal_pb2_grpc, jobs_pb2
from services.cli.client import FinetuneClient
from services.common.artifacts import ArtifactStore

pytestmark = pytest.mark.integration

TERMINAL = {"SUCCESS", "ERROR", "CANCELLED"}
ROWS = [{"prompt": f"Which code has vault {i}?", "completion": f"Vault {i} has code {i * 7 % 100}."}
        for i in range(40)]
OPTIONS = {"batch_size": 4, "lora_rank": 4, "num_workers": 1}
WORKER_CPUS = 2   # the one training worker gets them all (services.trainer.launch.plan_workers)
QUERY = "SELECT prompt, completion FROM train"


@pytest.fixture(scope="module")
def client(control, api_key):
    with FinetuneClient(control.address, "127.0.0.1:1", api_key) as c:
        c.load_rows("train", ROWS)
        yield c


@pytest.fixture(scope="module")
def store(s3_env) -> ArtifactStore:
    _, bucket = s3_env
    return ArtifactStore(f"s3://{bucket}/artifacts")


def status(job) -> str:
    return jobs_pb2.JobStatus.Name(job.status)


def wait_for(client, job_id, done, what, diagnose, timeout_s=900, seen=None):
    return wait_for_job(client, job_id, done, what, timeout_s,
                        diagnose=lambda job: diagnose(job_id, job), seen=seen, every_s=0.3)


@pytest.fixture
def diagnose(control, head):
    """What the job, control and Ray last showed (for failure messages only)."""
    def diagnosis(job_id, job) -> str:
        seen = [f"last DESCRIBE: {status(job)} step {job.step}/{job.total_steps}"
                if job is not None else "no DESCRIBE",
                f"control log:\n{control.log.read_text(errors='replace')[-3000:]}"]
        try:
            from ray.job_submission import JobSubmissionClient

            ray = JobSubmissionClient(head.dashboard)
            seen.append(f"Ray says {ray.get_job_status(job_id)}; its log:\n"
                        f"{ray.get_job_logs(job_id)[-4000:]}")
            seen.append(f"nodes: {[(n['node_name'], n['state']) for n in nodes(head.dashboard)]}")
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
            seen.append(f"Ray did not answer: {exc}")
        return "\n".join(seen)
    return diagnosis


def ray_job(head, job_id):
    """The Ray job control submitted for `job_id` (submission id = job id), on this cluster."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard).get_job_info(job_id)


def ray_job_logs(head, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard).get_job_logs(job_id)


def job_actors(head, ray_job_id: str) -> dict[str, list[dict]]:
    """The job's actors (dead ones too) by class name."""
    from ray.util.state import list_actors

    found: dict[str, list[dict]] = {}
    for actor in list_actors(address=head.dashboard, filters=[("job_id", "=", ray_job_id)],
                             limit=10000, raise_on_missing_output=False):
        found.setdefault(actor["class_name"], []).append(actor.asdict())
    return found


def steps_recorded(client, model: str) -> list[int]:
    results = client.download_artifact(model, "training_results.csv").decode()
    return [int(row["step"]) for row in csv.DictReader(io.StringIO(results))]


def count(database_url: str, sql: str, *params) -> int:
    import psycopg

    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as db:
        return db.execute(sql, params).fetchone()[0]


def assert_control_started_no_ray(control, head, workers) -> None:
    """Control was given a cluster: no raylet or GCS of its own, and every raylet and GCS
    serving this cluster's temp dirs is one the test started."""
    descendants = {p.pid for p in psutil.Process(control.proc.pid).children(recursive=True)}
    assert not [cmdline[:3] for pid, cmdline in ray_daemons() if pid in descendants], \
        "control started Ray itself"
    ours = {head.temp_dir: "head", **{w.temp_dir: w.name for w in workers}}
    started = {p.pid for node in (head, *workers) for p in node.processes()}
    for pid, cmdline in ray_daemons():
        if any(folder in arg for folder in ours for arg in cmdline):
            assert pid in started, f"{cmdline[:3]} uses this cluster's folders, yet the test " \
                                   "did not start it"
    for node in (head, *workers):   # each node in its own temp dir, as asked
        raylets = [p for p in node.processes() if p.name() == "raylet"]
        assert len(raylets) == 1 and any(node.temp_dir in a for a in raylets[0].cmdline())
    alive = sorted(n["node_id"] for n in nodes(head.dashboard) if n["state"] == "ALIVE")
    assert alive == sorted([head.node_id, *[w.node_id for w in workers]])


def test_a_job_trains_on_the_worker_node(head, control, client, store, s3_env, database_url,
                                         base_model_spec, diagnose, tmp_path):
    s3, bucket = s3_env
    with ray_worker_node(head, "ft-worker-a", num_cpus=WORKER_CPUS) as worker:
        job = client.create_job("placed", base_model_spec.name, QUERY, max_epochs=1,
                                **OPTIONS)
        done = wait_for(client, job.id, lambda j: status(j) == "SUCCESS", "SUCCESS", diagnose)

        # The Ray job is this cluster's; its driver ran on the head, its workers on the node.
        details = ray_job(head, job.id)
        assert str(details.status).rsplit(".", 1)[-1] == "SUCCEEDED"
        assert details.driver_node_id == head.node_id
        actors = job_actors(head, details.job_id)
        trainers = actors.get("RayTrainWorker", [])
        assert trainers and {a["node_id"] for a in trainers} == {worker.node_id}, actors
        assert {a["node_id"] for a in actors.get("TrainController", [])} == {head.node_id}
        assert_control_started_no_ray(control, head, [worker])

    assert done.trained_tokens == done.estimated_trained_tokens > 0
    assert steps_recorded(client, "placed") == list(range(1, done.total_steps + 1))
    model = client.get_model("placed")
    assert model.job_id == job.id and "adapter_model.safetensors" in model.artifacts

    # Artifacts in the bucket, none in control's home; metadata in PostgreSQL.
    keys = s3.keys(bucket, f"artifacts/jobs/{job.id}/")
    for name in ("spec.json", "data/training.jsonl", "output/adapter_model.safetensors",
                 "output/manifest.json"):
        assert f"artifacts/jobs/{job.id}/{name}" in keys
    assert any(k.startswith(f"artifacts/jobs/{job.id}/checkpoints/") for k in keys)
    assert not (control.home / "artifacts").exists() and not (control.home / "control.db").exists()
    assert count(database_url, "SELECT count(*) FROM models WHERE job_id = %s", job.id) == 1
    assert count(database_url, "SELECT count(*) FROM fine_tuning_usage WHERE job_id = %s",
                 job.id) == 1

    # Inference's side: resolve the model at control, fetch the adapter from the bucket only.
    from services.inference.adapters import AdapterRegistry, ResolvedModel
    from services.inference.config import BaseModel

    key = (control.home / "bootstrap_key").read_text().strip()
    with grpc.insecure_channel(control.address) as channel:
        resolved = internal_pb2_grpc.ModelResolutionServiceStub(channel).ResolveModel(
            internal_pb2.ResolveModelRequest(api_key=key, model="placed"),
            metadata=[("authorization", f"Bearer {SERVICE_TOKEN}")])
    assert resolved.adapter_uri == store.uri("jobs", job.id, "output")
    registry = AdapterRegistry(BaseModel.from_spec(base_model_spec), 16, tmp_path / "cache")
    lora = asyncio.run(registry.adapter_for(ResolvedModel(
        model=resolved.model, base_model=resolved.base_model,
        adapter_uri=resolved.adapter_uri, adapter_id=resolved.adapter_id)))
    assert registry.validations == 1
    fetched = tmp_path / "cache" / str(resolved.adapter_id)
    assert lora.path == str(fetched)
    assert (fetched / "adapter_model.safetensors").read_bytes() == store.read_bytes(
        store.uri("jobs", job.id, "output", "adapter_model.safetensors"))


def registered_checkpoint(store: ArtifactStore, checkpoint_uri: str, job_id: str) -> dict | None:
    """The run state of the checkpoint Ray Train has registered last (its controller's
    snapshot in the bucket), if any yet."""
    run = f"{checkpoint_uri}/{job_id}"
    try:
        snapshot = json.loads(store.read_bytes(f"{run}/checkpoint_manager_snapshot.json"))
        latest = snapshot.get("latest_checkpoint_result") or {}
        if not latest.get("checkpoint_dir_name"):
            return None
        return json.loads(store.read_bytes(f"{run}/{latest['checkpoint_dir_name']}/state.json"))
    except (FileNotFoundError, json.JSONDecodeError):   # not yet, or being rewritten
        return None


def test_a_lost_worker_node_is_replaced_and_the_job_resumes(head, control, client, store,
                                                           base_model_spec, diagnose):
    started = [start_worker_node(head, "ft-worker-b", num_cpus=WORKER_CPUS)]
    try:
        job = client.create_job("resumed", base_model_spec.name, QUERY, max_epochs=3,
                                checkpoint_every_steps=2, **OPTIONS)
        spec = json.loads(store.read_bytes(store.uri("jobs", job.id, "spec.json")))
        wait_for(client, job.id, lambda j: status(j) == "IN_PROGRESS" and j.step >= 1,
                 "its first training step", diagnose)

        def checkpointed():
            found = registered_checkpoint(store, spec["checkpoint_uri"], job.id)
            if found is None:
                running = client.get_job(job.id)
                assert status(running) == "IN_PROGRESS", diagnose(job.id, running)
            return found

        checkpoint = wait_until(checkpointed, 600,   # a hang guard, not an assertion on speed
                                f"a registered checkpoint of job {job.id}", every_s=0.2,
                                diagnose=lambda: diagnose(job.id, client.get_job(job.id)))

        started[0].kill()   # the machine is gone: raylet, agents and the training worker
        at_kill = client.get_job(job.id)
        assert checkpoint["step"] >= 1 and at_kill.step < at_kill.total_steps  # mid-training
        started.append(start_worker_node(head, "ft-worker-c", num_cpus=WORKER_CPUS))

        seen: list = []
        done = wait_for(client, job.id, lambda j: status(j) == "SUCCESS",
                        "SUCCESS on the replacement node", diagnose, seen=seen)
        details = ray_job(head, job.id)
        logs = ray_job_logs(head, job.id)
        actors = job_actors(head, details.job_id)
    finally:
        for node in started:
            discard_worker_node(node)

    lost, replacement = started
    assert str(details.status).rsplit(".", 1)[-1] == "SUCCEEDED"
    # Ray Train ran the worker group on the lost node, then on the replacement, nowhere else.
    # (an attempt that never got placed has no node: Ray Train may retry a start that waits
    # for the GCS to notice the lost node)
    trainers = [a for a in actors.get("RayTrainWorker", []) if a["node_id"]]
    assert {a["node_id"] for a in trainers} == {lost.node_id, replacement.node_id}, actors
    # ... resuming from the checkpoint registered before the kill (or a later one), not step 0
    resumed = re.findall(rf"resuming {job.id} after epoch (\d+), step (\d+)", logs)
    assert resumed and int(resumed[0][1]) >= checkpoint["step"], logs[-4000:]
    # DESCRIBE never went back to the start (its last step before the kill may be short of
    # the checkpoint's: step reports are rate-limited)
    assert min(j.step for j in seen) >= min(checkpoint["step"], at_kill.step) >= 1
    # each step trained and recorded once; the tokens of an uninterrupted run
    assert steps_recorded(client, "resumed") == list(range(1, done.total_steps + 1))
    assert done.step == done.total_steps
    assert done.trained_tokens == done.estimated_trained_tokens > 0
    manifest = json.loads(store.read_bytes(store.uri("jobs", job.id, "output", "manifest.json")))
    assert manifest["trained_tokens"] == done.trained_tokens
    assert manifest["steps"] == done.total_steps
    events = list(client.job_events(job.id))
    types = [e.type for e in events]
    assert types.count("job.succeeded") == 1 and types.count("model.registered") == 1
    # the trainer's epoch milestones, once each (the kill came mid-epoch, after a checkpoint)
    assert [m for e in events for m in re.findall(r"^epoch (\d+) of 3 done", e.message)] == \
        ["1", "2", "3"], [(e.type, e.message) for e in events]

