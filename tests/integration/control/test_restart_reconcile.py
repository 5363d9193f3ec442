"""Durability across a control crash, on real processes: a real local Ray and `python -m
services.control`.

- Control is SIGKILLed while a job trains (the real trainer, `services.trainer.job`, on the
  default base model) and started again on the same home and port: the job is re-attached and
  ends SUCCESS with exactly one model row and one usage row.
- While control is down the Ray cluster is replaced by a new one, which knows nothing of a
  running job (a stand-in trainer that sleeps): after the restart the job is ERROR, saying why.
"""

import json
import sqlite3

import pytest
from control_processes import ControlProcess, free_port, ray_head, wait_for_job

from finetune.control.v1 import jobs_pb2
from services.cli.client import FinetuneClient

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "restart-test-token"
TERMINAL = {"SUCCESS", "ERROR", "CANCELLED"}


@pytest.fixture(scope="module")
def ray_address():
    with ray_head(num_cpus=2) as address:
        yield address


def status(job) -> str:
    return jobs_pb2.JobStatus.Name(job.status)


def wait_for(client, job_id, done, what, timeout_s=900, control=None, ray_address=None):
    return wait_for_job(client, job_id, done, what, timeout_s,
                        diagnose=lambda job: diagnosis(job_id, job, control, ray_address))


def diagnosis(job_id, job, control, ray_address) -> str:
    seen = [f"last DESCRIBE: {status(job)} step {job.step}/{job.total_steps} "
            f"progress {job.progress:.2f}" if job is not None else "no DESCRIBE"]
    if control is not None:
        seen.append(f"control log:\n{control.log.read_text(errors='replace')[-3000:]}")
    if ray_address is not None:
        from ray.job_submission import JobSubmissionClient
        try:
            ray = JobSubmissionClient(ray_address)
            seen.append(f"Ray says {ray.get_job_status(job_id)}; its log:\n"
                        f"{ray.get_job_logs(job_id)[-3000:]}")
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
            seen.append(f"Ray did not answer: {exc}")
    return "\n".join(seen)


def count(db, sql, *params) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchone()[0]


def test_control_crash_mid_training(tmp_path, base_model_spec, ray_address):
    home = tmp_path / "home"
    control = ControlProcess(home, free_port(), ray_address, SERVICE_TOKEN,
                             "--reconcile-interval-s", "1", "--default-num-workers", "1")
    control.start()
    try:
        key = (home / "bootstrap_key").read_text().strip()
        with FinetuneClient(control.address, "127.0.0.1:1", key) as client:
            client.load_rows("train", [{"prompt": f"Which code has vault {i}?",
                                        "completion": f"Vault {i} has code {i * 7 % 100}."}
                                       for i in range(40)])
            trained = client.create_job("survivor", base_model_spec.name,
                                        "SELECT prompt, completion FROM train", max_epochs=3,
                                        batch_size=4, lora_rank=4, num_workers=1)
            running = wait_for(client, trained.id,
                               lambda j: status(j) == "IN_PROGRESS" and j.step >= 1,
                               "its first training step", control=control,
                               ray_address=ray_address)

        control.kill()
        killed_at_step = running.step
        assert killed_at_step < running.total_steps   # it was mid-training

        control.start()   # same home, same port: the trainer reaches it again
        with FinetuneClient(control.address, "127.0.0.1:1", key) as client:
            done = wait_for(client, trained.id, lambda j: status(j) == "SUCCESS",
                            "SUCCESS after the restart", control=control,
                            ray_address=ray_address)
            events = list(client.job_events(trained.id))
            model = client.get_model("survivor")
    finally:
        control.stop()

    assert done.trained_tokens > 0 and done.training_result.training_loss > 0
    assert done.step == done.total_steps > killed_at_step
    assert model.job_id == trained.id and "adapter_model.safetensors" in model.artifacts
    db = home / "control.db"
    assert count(db, "SELECT count(*) FROM models") == 1
    assert count(db, "SELECT count(*) FROM models WHERE job_id = ?", trained.id) == 1
    assert count(db, "SELECT count(*) FROM fine_tuning_usage WHERE job_id = ?", trained.id) == 1
    types = [e.type for e in events]
    assert types.count("job.succeeded") == 1 and types.count("model.registered") == 1
    manifest = json.loads((home / "artifacts" / "jobs" / trained.id / "output" /
                           "manifest.json").read_text())
    assert manifest["trained_tokens"] == done.trained_tokens


STAND_IN_TRAINER = """#!/bin/sh
# A trainer that never finishes (the cluster goes away under it); exits on its own anyway.
sleep 120
"""


def test_a_run_the_new_cluster_does_not_know_is_an_error(tmp_path, base_model_spec):
    trainer = tmp_path / "stand-in-python"
    trainer.write_text(STAND_IN_TRAINER)
    trainer.chmod(0o755)
    home = tmp_path / "home"
    dashboard_port = free_port()
    with ray_head(num_cpus=1, dashboard_port=dashboard_port) as ray_address:
        control = ControlProcess(home, free_port(), ray_address, SERVICE_TOKEN,
                                 "--reconcile-interval-s", "1", "--trainer-python",
                                 str(trainer))
        control.start()
        try:
            key = (home / "bootstrap_key").read_text().strip()
            with FinetuneClient(control.address, "127.0.0.1:1", key) as client:
                client.load_rows("train", [{"prompt": "p", "completion": "c"}])
                job = client.create_job("vanishing", base_model_spec.name,
                                        "SELECT prompt, completion FROM train")
                wait_for(client, job.id, lambda j: status(j) == "IN_PROGRESS",
                         "running on Ray", timeout_s=300)
        finally:
            control.kill()
    # a new cluster at the same address, which has never heard of the job
    with ray_head(num_cpus=1, dashboard_port=dashboard_port):
        control.start()
        try:
            with FinetuneClient(control.address, "127.0.0.1:1", key) as client:
                lost = wait_for(client, job.id, lambda j: status(j) == "ERROR",
                                "ERROR after the restart", timeout_s=300)
                events = [e.type for e in client.job_events(job.id)]
        finally:
            control.stop()
    assert lost.error.code == "LOST"
    assert "Ray run vanished" in lost.error.message and lost.HasField("finished_on")
    assert events.count("job.failed") == 1
    assert count(home / "control.db", "SELECT count(*) FROM models") == 0
