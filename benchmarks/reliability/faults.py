"""Faults under load: SIGKILL control, inference and Ray Train workers while COMPLETE traffic
and a training job run, then check that nothing was lost or counted twice.

    make faults                      # python -m benchmarks.reliability.faults --rounds 2
    python -m benchmarks.reliability.faults --rounds 1 --concurrency 8 --no-doc   # quicker

One run: a local stack (`finetune up`'s processes) in a temporary home; a first model trained
on the sample tickets; then `--concurrency` clients send COMPLETE without pause, alternating
that model and its base, each request under its own request_id and retried under the same id
on UNAVAILABLE, as a careful client does. A second job trains meanwhile, and each round kills
control, then inference, then one Ray Train worker (SIGKILL, the whole process group, after a
seeded random wait). After the last round the traffic stops and the checks run:

- every request was answered in the end, and clients saw only UNAVAILABLE (or a deadline)
  on the way; never INTERNAL, never a different answer for a retried id;
- control's COMPLETE usage rows equal the OK responses exactly: the same count, the same
  prompt and completion tokens per model;
- the job ends SUCCESS with each optimizer step once in its training_results.csv;
- each model is registered once, none lost.

The counts go to benchmarks/reliability/results/faults-<time>.json and, unless --no-doc, to
the "Faults under load" section of docs/reliability.md. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks.reliability.load import (
    FIRST_MODEL,
    QUERY,
    Traffic,
    billed_once_delivered,
    percentile,
    tally,
    train_first_model,
    wait_job,
)
from benchmarks.reliability.report import record_run
from finetune.control.v1 import jobs_pb2
from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig
from services.common.base_models import DEFAULT_BASE_MODEL

SECTION = "## Faults under load"
SECOND_MODEL = "faults.public.router_v2"


def kill_ray_worker(stack: LocalStack, job_alive) -> str:
    """SIGKILL one RayTrainWorker of the running job; waits for one to exist (60 s)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job_alive():
        workers = list_actors(address=stack.ray_dashboard_url,
                              filters=[("class_name", "=", "RayTrainWorker"),
                                       ("state", "=", "ALIVE")])
        if workers:
            os.kill(workers[-1]["pid"], signal.SIGKILL)
            return "killed"
        time.sleep(1)
    return "skipped: no worker alive (the job was not training)"


def steps_of(client: FinetuneClient, model: str) -> list[int]:
    text = client.download_artifact(model, "training_results.csv").decode()
    return [int(r["step"]) for r in csv.DictReader(io.StringIO(text))]


def run(args) -> dict:
    rng = random.Random(args.seed)
    home = Path(tempfile.mkdtemp(prefix="ft-faults-"))
    started = time.monotonic()
    result: dict = {"seed": args.seed, "rounds": args.rounds, "concurrency": args.concurrency,
                    "kills": [], "failures": []}
    with LocalStack(StackConfig(home=home)) as stack:
        admin = stack.admin_key()
        client = FinetuneClient(stack.control_address, stack.inference_address, admin)
        user = client.whoami().user_name
        prompts = train_first_model(client)

        traffic = Traffic(stack.inference_address, admin, (FIRST_MODEL, DEFAULT_BASE_MODEL),
                          prompts, args.concurrency)
        traffic.start()
        job = client.create_job(SECOND_MODEL, DEFAULT_BASE_MODEL, QUERY, seed=11,
                                max_epochs=args.epochs, checkpoint_every_steps=2)
        result["job"] = job.id

        def job_alive() -> bool:
            try:
                return client.get_job(job.id).status in (jobs_pb2.PENDING, jobs_pb2.IN_PROGRESS)
            except grpc.RpcError:
                return True   # control is down: the job is not known to be over

        for round_ in range(args.rounds):
            for target in ("control", "inference", "ray worker"):
                time.sleep(rng.uniform(3, 15))
                at = round(time.monotonic() - started, 1)
                before = traffic.codes["OK"]
                if target == "control":
                    stack.restart_control(kill=True)
                    outcome = "killed"
                elif target == "inference":
                    stack.restart_inference(kill=True)
                    outcome = "killed"
                else:
                    outcome = kill_ray_worker(stack, job_alive)
                print(f"round {round_ + 1}: {target} {outcome} at {at} s "
                      f"({before} answers so far)", flush=True)
                result["kills"].append({"round": round_ + 1, "target": target, "at_s": at,
                                        "outcome": outcome})
        print("waiting for the job ...", flush=True)
        second = wait_job(client, job.id, 3600)
        traffic.finish()
        result["seconds"] = round(time.monotonic() - started, 1)

        # Every answer's usage row, once it has travelled through the outbox.
        answered = tally((m, p, c) for m, _, p, c in traffic.answers.values())
        billed, billed_rows = billed_once_delivered(client, user, answered)
        models = collections.Counter(m.name for m in client.list_models())
        steps = steps_of(client, SECOND_MODEL) if second.status == jobs_pb2.SUCCESS else []
        events = collections.Counter(e.type for e in client.job_events(job.id))
        client.close()

    result.update({
        "answers": len(traffic.answers), "usage_rows": billed_rows,
        "answered_by_model": answered, "billed_by_model": billed,
        "client_codes": dict(traffic.codes), "retried_requests": traffic.retried,
        "p50_s": percentile(traffic.latencies, 0.5),
        "p99_s": percentile(traffic.latencies, 0.99),
        "job_status": jobs_pb2.JobStatus.Name(second.status), "job_error": second.error.message,
        "job_steps": len(steps), "job_total_steps": second.total_steps,
        "job_events": dict(events), "models": dict(models),
    })
    failures = result["failures"]
    failures += traffic.unexpected[:20]
    if traffic.mismatched:
        failures.append(f"{len(traffic.mismatched)} retried ids answered differently")
    if billed != answered:
        failures.append(f"usage {billed} != answers {answered}")
    if second.status != jobs_pb2.SUCCESS:
        failures.append(f"job ended {result['job_status']}: {second.error.message}")
    elif steps != list(range(1, second.total_steps + 1)):
        failures.append(f"steps recorded {steps}, expected 1..{second.total_steps} once each")
    if models != {FIRST_MODEL: 1, SECOND_MODEL: 1}:
        failures.append(f"models {dict(models)}")
    return result


def section(result: dict, commit: str) -> str:
    kills = collections.Counter((k["target"], k["outcome"] == "killed") for k in result["kills"])
    done = ", ".join(f"{target} {n}x" for (target, killed), n in sorted(kills.items()) if killed)
    verdict = "every check held" if not result["failures"] else \
        "FAILED: " + "; ".join(result["failures"])
    codes = ", ".join(f"{c} {n}" for c, n in sorted(result["client_codes"].items()))
    return "\n".join([
        SECTION, "",
        "`make faults` (`benchmarks/reliability/faults.py`): a local stack, a first model "
        "trained on the sample tickets, then COMPLETE clients without pause (alternating that "
        "model and its base, each request retried under its own request_id until answered) "
        "while a second job trains; each round SIGKILLs control, then inference, then a Ray "
        "Train worker after a seeded random wait. Checks: every request answered, clients see "
        "only UNAVAILABLE or a deadline before their answer, control's usage rows equal the "
        "answers per model (count, prompt and completion tokens), the job ends SUCCESS with "
        "each step once, each model registered once.",
        "",
        f"Latest run: {result['date']} UTC, commit `{commit}`, `{result['cpu']}` "
        f"({os.cpu_count()} cores), seed {result['seed']}, {result['concurrency']} clients, "
        f"{result['rounds']} rounds ({done}), {result['seconds']:.0f} s in all (the first "
        "model's training included; kill times in the results file are from the start). "
        f"**{verdict}.**",
        "",
        "| what | count |",
        "|---|---:|",
        f"| requests answered (OK) | {result['answers']} |",
        f"| COMPLETE usage rows at control | {result['usage_rows']} |",
        f"| requests that needed a retry | {result['retried_requests']} |",
        f"| what clients saw, per attempt | {codes} |",
        f"| latency to the answer, retries included: p50 / p99 | "
        f"{result['p50_s']} s / {result['p99_s']} s |",
        f"| the job | {result['job_status']}, {result['job_steps']} of "
        f"{result['job_total_steps']} steps recorded once each |",
        f"| models registered | {sum(result['models'].values())} "
        f"({len(result['models'])} distinct) |",
        "",
        "Per model, answered vs billed ([requests, prompt tokens, completion tokens]): "
        + "; ".join(f"`{m}` {result['answered_by_model'].get(m)} vs "
                    f"{result['billed_by_model'].get(m)}"
                    for m in sorted(result["answered_by_model"])) + ".",
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4, help="of the job trained under fire")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/reliability.md")
    args = p.parse_args()
    record_run("faults", run(args), SECTION, section, not args.no_doc)

if __name__ == "__main__":
    main()
