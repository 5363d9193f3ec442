"""T3: from CREATE to the first optimizer step, on a running stack.

    .venv/bin/python -m benchmarks.trainer.startup            # --jobs 3 --per-intent 2

Starts the embedded stack (Ray head, control, vLLM inference), loads a small BANKING77 sample,
then creates `--jobs` fine-tuning jobs one after another with the service's defaults. Each job is
followed until its Watch stream first shows step 1, then cancelled, and the next one starts: the
first job of a run pays for what is cached per machine (the precision probe), the later ones
show what every job pays. For each job the job's own events are listed with their time since
CREATE (submitted, driver running, data ready, precision and model, first step), which is where
the time goes.

Writes benchmarks/trainer/results/startup.json (or --output) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import machine
from benchmarks.quality.banking77 import DATASET, sample
from benchmarks.results import save
from finetune.control.v1 import jobs_pb2
from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig
from services.common.base_models import DEFAULT_BASE_MODEL

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = "startup.public.train"
console = Console()


def first_step(client: FinetuneClient, job_id: str, timeout_s: float) -> float | None:
    """Seconds (monotonic clock) at which the Watch stream first showed step 1, or None if the
    job ended first. Progress reports come at most once a second, so this is within a second."""
    for update in client.watch_job(job_id, timeout=timeout_s):
        if update.step >= 1:
            return time.monotonic()
        if update.status in (jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED):
            return None
    return None


def one_job(client: FinetuneClient, index: int, timeout_s: float) -> dict:
    created = time.monotonic()
    created_wall = time.time()
    job = client.create_job(f"startup.public.m{index}", DEFAULT_BASE_MODEL,
                            f"SELECT prompt, completion FROM {TABLE}")
    stepped = first_step(client, job.id, timeout_s)
    client.cancel_job(job.id)
    client.wait_job(job.id, timeout=timeout_s)
    events = [{"at_s": round(e.time.ToDatetime().timestamp() - created_wall, 1),
               "type": e.type, "message": e.message}
              for e in client.job_events(job.id)]
    return {"job_id": job.id,
            "create_to_first_step_s": round(stepped - created, 1) if stepped else None,
            "events": [e for e in events if stepped is None
                       or e["at_s"] <= stepped - created + 1.0]}


def run(args) -> dict:
    rows = [{"prompt": r["text"], "completion": r["category"]}
            for r in sample(args.dataset / "train.csv", args.per_intent, args.seed)]
    home = Path(args.home or tempfile.mkdtemp(prefix="startup-"))
    load_before = os.getloadavg()
    with LocalStack(StackConfig(home=home)) as stack, \
            FinetuneClient(stack.control_address, stack.inference_address,
                           stack.admin_key()) as client:
        client.load_rows(TABLE, rows, replace=True)
        jobs = []
        for i in range(args.jobs):
            jobs.append(one_job(client, i, args.timeout))
            console.print(f"job {i + 1}: CREATE to first step "
                          f"{jobs[-1]['create_to_first_step_s']} s")
    return {"benchmark": "trainer_startup",
            "machine": {**machine.describe(), "load_average_start": machine.load(load_before),
                        "load_average_end": machine.load()},
            "training_rows": len(rows), "jobs": jobs}


def show(result: dict) -> None:
    table = Table(title="CREATE to the first optimizer step (s since CREATE)")
    table.add_column("event")
    for i, _ in enumerate(result["jobs"]):
        table.add_column(f"job {i + 1}", justify="right")
    messages: list[str] = []
    for job in result["jobs"]:
        for e in job["events"]:
            key = e["message"].split(" in ")[0][:60] or e["type"]
            if key not in messages:
                messages.append(key)
    for key in messages:
        cells = []
        for job in result["jobs"]:
            hit = next((e for e in job["events"]
                        if (e["message"].split(" in ")[0][:60] or e["type"]) == key), None)
            cells.append(f"{hit['at_s']:.1f}" if hit else "")
        table.add_row(key, *cells)
    table.add_row("[bold]first step (Watch)[/bold]",
                  *[str(j["create_to_first_step_s"]) for j in result["jobs"]])
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--per-intent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--home", default="")
    parser.add_argument("--output", type=Path, default=RESULTS / "startup.json")
    args = parser.parse_args()
    result = run(args)
    save(result, args.output)
    show(result)
    console.print(f"written to {args.output}")


if __name__ == "__main__":
    main()
