"""What Ray Train itself costs a job: a TorchTrainer whose function does nothing.

    .venv/bin/python -m benchmarks.trainer.ray_train_overhead     # --rounds 3

Starts a local Ray (2 workers x 1 CPU, gloo, as a CPU job runs) and times `fit()` of a no-op
training function, with the controller's health-check interval at Ray's default (2 s) and at
the trainer's (`services.trainer.launch.HEALTH_CHECK_INTERVAL_S`), interleaved. For each fit it
records when the first worker process was created and when the function started, and how long
`fit()` took to return after the function had returned: the interval is how often the
controller looks, so it decides that last figure.

Writes benchmarks/trainer/results/ray_train_overhead.json (or --output) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import machine
from benchmarks.results import save
from services.trainer.launch import HEALTH_CHECK_INTERVAL_S

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
console = Console()


def noop(config: dict) -> dict:
    import psutil

    now = time.time()   # the function does nothing: it starts and returns at once
    return {"created": psutil.Process().create_time(), "entered": now, "returned": now}


def one_fit(interval: float | None, storage: str, name: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if interval is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = str(interval)   # Ray Train hands it on to the controller
    started = time.time()
    result = TorchTrainer(
        noop,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=name, storage_path=storage)).fit()
    ended = time.time()
    r = result.return_value
    return {"interval_s": interval if interval is not None else 2.0,
            "fit_s": round(ended - started, 2),
            "worker_created_s": round(r["created"] - started, 2),
            "function_started_s": round(r["entered"] - started, 2),
            "return_lag_s": round(ended - r["returned"], 2)}


def run(args) -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")   # leave no ~/.ray/auth_token behind
    import ray

    load_before = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    fits = []
    try:
        with tempfile.TemporaryDirectory(prefix="ray-train-overhead-") as storage:
            one_fit(None, storage, "warmup")   # the first fit also pays Ray's own start
            for i in range(args.rounds):
                for interval in (None, HEALTH_CHECK_INTERVAL_S):
                    fits.append(one_fit(interval, storage, f"fit{i}-{interval}"))
                    console.print(fits[-1])
    finally:
        ray.shutdown()
    return {"benchmark": "ray_train_overhead",
            "machine": {**machine.describe(), "load_average_start": machine.load(load_before),
                        "load_average_end": machine.load()},
            "ray": ray.__version__, "fits": fits}


def show(result: dict) -> None:
    table = Table(title="A no-op TorchTrainer, 2 workers x 1 CPU (s, median of the rounds)")
    for column in ("health-check interval", "fit()", "first worker created",
                   "function started", "fit() returned after the function"):
        table.add_column(column, justify="right")
    for interval in sorted({f["interval_s"] for f in result["fits"]}, reverse=True):
        fits = [f for f in result["fits"] if f["interval_s"] == interval]
        table.add_row(str(interval), *(f"{statistics.median(f[k] for f in fits):.2f}" for k in
                                       ("fit_s", "worker_created_s", "function_started_s",
                                        "return_lag_s")))
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS / "ray_train_overhead.json")
    args = parser.parse_args()
    result = run(args)
    save(result, args.output)
    show(result)
    console.print(f"written to {args.output}")


if __name__ == "__main__":
    main()
