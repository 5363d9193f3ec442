"""A sweep on real processes: `python -m services.control` over a real local Ray head trains two
trials (the real trainer on the default base model, one epoch on a few rows, one after the
other), registers the trial with the lower validation loss under the sweep's name, keeps the
other as a candidate, and the CLI draws the trials' losses as one PNG."""

import sqlite3

import pytest
from control_processes import ControlProcess, free_port, ray_head

from finetune.control.v1 import sweeps_pb2
from services.cli.client import FinetuneClient
from services.cli.sweep_commands import comparison_png, trial_curves

pytestmark = pytest.mark.integration

SERVICE_TOKEN = "sweep-test-token"


def count(db, sql, *params) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchone()[0]


def test_a_two_trial_sweep_registers_the_best(tmp_path, base_model_spec):
    home = tmp_path / "home"
    with ray_head(num_cpus=2) as ray_address:
        control = ControlProcess(home, free_port(), ray_address, SERVICE_TOKEN,
                                 "--reconcile-interval-s", "1", "--default-num-workers", "1")
        control.start()
        try:
            key = (home / "bootstrap_key").read_text().strip()
            with FinetuneClient(control.address, "127.0.0.1:1", key) as client:
                client.load_rows("train", [{"prompt": f"Which code has vault {i}?",
                                            "completion": f"Vault {i} has code {i * 7 % 100}."}
                                           for i in range(8)])
                created = client.create_sweep(
                    "swept", base_model_spec.name, "SELECT prompt, completion FROM train",
                    validation_query="SELECT prompt, completion FROM train LIMIT 3",
                    grid={"learning_rate": [1e-5, 5e-3]}, max_epochs=1, batch_size=4,
                    lora_rank=4, num_workers=1)
                assert [t.status for t in created.trials] == [sweeps_pb2.TRIAL_PLANNED] * 2
                assert created.budget.max_concurrent == 1
                try:
                    done = client.wait_sweep(created.id, timeout=1200)
                except Exception:
                    pytest.fail(f"the sweep did not end: {control.log.read_text()[-4000:]}")
                jobs = [client.get_job(t.job_id) for t in done.trials]
                model = client.get_model("swept")
                png = comparison_png(done, trial_curves(client, done))
        finally:
            control.stop()

    assert done.status == sweeps_pb2.SWEEP_SUCCEEDED, (done.error, control.log.read_text()[-3000:])
    assert all(t.status == sweeps_pb2.TRIAL_SUCCESS for t in done.trials)
    # one trial at a time: the second started after the first had ended
    assert jobs[1].started_on.ToDatetime() >= jobs[0].finished_on.ToDatetime()
    losses = {t.index: t.validation_loss for t in done.trials}
    best = min(losses, key=losses.__getitem__)
    assert done.best_trial == best and done.trials[best - 1].best
    assert done.progress == 1.0
    assert model.job_id == done.trials[best - 1].job_id
    assert "adapter_model.safetensors" in model.artifacts
    other = 3 - best
    assert done.trials[other - 1].model == f"public.public.swept__trial_{other}"
    assert done.trained_tokens == sum(j.trained_tokens for j in jobs) > 0
    db = home / "control.db"
    assert count(db, "SELECT count(*) FROM models WHERE deleted_on IS NULL") == 2
    assert count(db, "SELECT count(*) FROM fine_tuning_usage") == 2
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
