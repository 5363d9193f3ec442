"""A soak: an hour of mixed traffic at a bounded rate, with each process's resources sampled.

    make soak                                   # --minutes 60
    python -m benchmarks.reliability.soak --minutes 5 --no-doc    # a short try

One local stack (`finetune up`'s processes) and a model trained on the sample tickets, then for
`--minutes`: COMPLETE at `--rate` requests/s (fine-tuned and base alternating, retried under
their request_id), SHOW and DESCRIBE once a second, a small training job every
`--job-every-min` minutes and an evaluation of the model between jobs. Every 30 s it samples,
for control, inference (with its engine process) and Ray: resident memory and open file
descriptors, plus the size of control's SQLite WAL and the COMPLETE latency percentiles of the
last window.

It passes when every request was answered, usage rows equal the answers, every job and
evaluation succeeded, and neither control's nor inference's resident memory grew by more than
`--rss-bound` (default 25%) from the first sample after warm-up (the first job's end) to the
last (Ray's, whose training workers come and go, is reported).
Samples go to benchmarks/reliability/results/soak-<time>.json and the summary to the "Soak"
section of docs/reliability.md (unless --no-doc). Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import grpc

from benchmarks.reliability.load import (
    FIRST_MODEL,
    QUERY,
    RETRYABLE,
    Traffic,
    billed_once_delivered,
    percentile,
    tally,
    train_first_model,
    wait_job,
)
from benchmarks.reliability.report import record_run
from finetune.control.v1 import evaluations_pb2, jobs_pb2
from services.cli.client import FinetuneClient
from services.cli.demo import HELD_OUT_FILE
from services.cli.stack import LocalStack, StackConfig
from services.common.base_models import DEFAULT_BASE_MODEL

SECTION = "## Soak"
HELD_OUT = "faults.public.held_out"
SAMPLE_EVERY_S = 30


def group_members(pgid: int) -> list[int]:
    """Every live process in a process group (a service and the children it spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
            except ProcessLookupError:
                pass
    return pids


def resources(pids: list[int]) -> tuple[int, int]:
    """(resident memory in MiB, open file descriptors) summed over the processes."""
    rss_kb, fds = 0, 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kb += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return rss_kb // 1024, fds


class Browsing:
    """SHOW and DESCRIBE once a second, as a dashboard polling the service would."""

    def __init__(self, client: FinetuneClient):
        self.client = client
        self.stop = threading.Event()
        self.calls = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                jobs = self.client.list_jobs(page_size=20).jobs
                if jobs:
                    self.client.get_job(jobs[0].id)
                self.client.get_model(FIRST_MODEL)
                self.calls += 3
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    self.errors.append(f"{err.code().name}: {err.details()}")


def run(args) -> dict:
    home = Path(tempfile.mkdtemp(prefix="ft-soak-"))
    result: dict = {"minutes": args.minutes, "rate_per_s": args.rate, "samples": [],
                    "jobs": [], "evaluations": [], "failures": []}
    with LocalStack(StackConfig(home=home)) as stack:
        admin = stack.admin_key()
        client = FinetuneClient(stack.control_address, stack.inference_address, admin)
        user = client.whoami().user_name
        prompts = train_first_model(client)
        client.load_table(HELD_OUT, HELD_OUT_FILE, replace=True)
        traffic = Traffic(stack.inference_address, admin, (FIRST_MODEL, DEFAULT_BASE_MODEL),
                          prompts, concurrency=4, rate_per_s=args.rate)
        browsing = Browsing(client)
        traffic.start()
        browsing.thread.start()
        wal = home / "control.db-wal"
        start = time.monotonic()
        end = start + args.minutes * 60
        next_job = start
        next_eval = start + args.job_every_min * 30
        running: list[tuple[str, str]] = []   # (kind, id)
        n = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_job:
                n += 1
                job = client.create_job(f"soak.public.router_{n}", DEFAULT_BASE_MODEL, QUERY,
                                        seed=n, max_epochs=1)
                running.append(("job", job.id))
                next_job = now + args.job_every_min * 60
            if now >= next_eval:
                ev = client.evaluate_model(FIRST_MODEL,
                                           f"SELECT prompt, label FROM {HELD_OUT}")
                running.append(("evaluation", ev.id))
                next_eval = now + args.job_every_min * 60
            running = [r for r in running if not _finished(client, r, result)]
            if result["jobs"] and "warm_at" not in result:   # models loaded, caches filled
                result["warm_at"] = len(result["samples"])
            since = now - SAMPLE_EVERY_S
            with traffic.lock:   # the two lists grow together, under the lock
                window = [lat for lat, at in zip(traffic.latencies, traffic.finished,
                                                 strict=True) if at >= since]
            sample = {"t_s": round(now - start), "answers": len(traffic.answers),
                      "wal_kb": wal.stat().st_size // 1024 if wal.exists() else 0,
                      "p50_s": percentile(window, 0.5), "p99_s": percentile(window, 0.99)}
            for proc in stack.procs:
                sample[f"{proc.name}_rss_mb"], sample[f"{proc.name}_fds"] = resources(
                    group_members(proc.popen.pid))
            result["samples"].append(sample)
            print(json.dumps(sample), flush=True)
            time.sleep(SAMPLE_EVERY_S)
        traffic.finish()
        browsing.stop.set()
        browsing.thread.join(10)
        for item in running:   # let what was started finish
            _wait_finished(client, item, result)

        answered = tally((m, p, c) for m, _, p, c in traffic.answers.values())
        billed, _ = billed_once_delivered(client, user, answered)
        client.close()

    failures = result["failures"]
    failures += traffic.unexpected[:20] + browsing.errors[:20]
    if billed != answered:
        failures.append(f"usage {billed} != answers {answered}")
    result.update({"answers": len(traffic.answers), "browsing_calls": browsing.calls,
                   "client_codes": dict(traffic.codes),
                   "p50_s": percentile(traffic.latencies, 0.5),
                   "p99_s": percentile(traffic.latencies, 0.99)})
    warm = result.get("warm_at", 0)   # the first sample after the first job ended
    samples = result["samples"]
    if len(samples) - warm >= 2:
        first, last = samples[warm], samples[-1]
        for name in ("control", "inference", "ray"):
            key = f"{name}_rss_mb"
            growth = (last[key] - first[key]) / max(1, first[key])
            result[f"{name}_rss_growth"] = round(growth, 3)
            # Ray's group holds the training workers, there or not as jobs come and go: its
            # figure is reported, the bound is for the two services.
            if name != "ray" and growth > args.rss_bound:
                failures.append(f"{name} resident memory grew {growth:.0%} "
                                f"({first[key]} -> {last[key]} MiB)")
    return result


def _finished(client: FinetuneClient, item: tuple[str, str], result: dict) -> bool:
    kind, item_id = item
    try:
        if kind == "job":
            job = client.get_job(item_id)
            if job.status in (jobs_pb2.PENDING, jobs_pb2.IN_PROGRESS):
                return False
            status = jobs_pb2.JobStatus.Name(job.status)
            result["jobs"].append({"id": item_id, "status": status})
            if job.status != jobs_pb2.SUCCESS:
                result["failures"].append(f"job {item_id} ended {status}: {job.error.message}")
        else:
            ev = client.get_evaluation(item_id)
            status = evaluations_pb2.EvaluationStatus.Name(ev.status)
            if status in ("EVALUATION_PENDING", "EVALUATION_RUNNING"):
                return False
            result["evaluations"].append({"id": item_id, "status": status})
            if status != "EVALUATION_SUCCEEDED":
                result["failures"].append(f"evaluation {item_id} ended {status}: {ev.error}")
    except grpc.RpcError as err:
        if err.code() not in RETRYABLE:
            result["failures"].append(f"{kind} {item_id}: {err.code().name}")
            return True
        return False
    return True


def _wait_finished(client: FinetuneClient, item: tuple[str, str], result: dict) -> None:
    if item[0] == "job":
        wait_job(client, item[1], 1800)
    deadline = time.monotonic() + 1800
    while not _finished(client, item, result) and time.monotonic() < deadline:
        time.sleep(5)


def section(result: dict, commit: str) -> str:
    samples = result["samples"]
    verdict = "every check held" if not result["failures"] else \
        "FAILED: " + "; ".join(result["failures"][:5])
    cols = ["t_s", "answers", "p50_s", "p99_s", "wal_kb", "control_rss_mb", "control_fds",
            "inference_rss_mb", "inference_fds", "ray_rss_mb", "ray_fds"]
    step = max(1, len(samples) // 12)
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    lines = [
        SECTION, "",
        "`make soak` (`benchmarks/reliability/soak.py`): a local stack and a model trained on "
        "the sample tickets; COMPLETE at a bounded rate (fine-tuned and base alternating), SHOW "
        "and DESCRIBE every second, a one-epoch job every few minutes and an evaluation between "
        "jobs. Every 30 s: resident memory (MiB) and open descriptors of each process group, "
        "control's SQLite WAL (KiB), and COMPLETE latency over the last 30 s (seconds, retries "
        "included). Bound: neither control nor inference grows more than 25% from the first "
        "sample after warm-up (the first job's end) to the last; Ray's group, whose training "
        "workers come and go with the jobs, is reported.",
        "",
        f"Latest run: {result['date']} UTC, commit `{commit}`, `{result['cpu']}` "
        f"({os.cpu_count()} cores), {result['minutes']} min at {result['rate_per_s']} "
        f"COMPLETE/s: {result['answers']} answers, {result['browsing_calls']} SHOW/DESCRIBE "
        f"calls, {len(result['jobs'])} jobs, {len(result['evaluations'])} evaluations; "
        f"p50 {result['p50_s']} s, p99 {result['p99_s']} s; resident memory growth "
        + ", ".join(f"{n} {result.get(f'{n}_rss_growth', 0):+.0%}"
                    for n in ("control", "inference", "ray"))
        + f". **{verdict}.**",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---:|" * len(cols),
        *("| " + " | ".join(str(s.get(c, "")) for c in cols) + " |" for s in shown),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--rate", type=float, default=2.0, help="COMPLETE requests per second")
    p.add_argument("--job-every-min", type=float, default=10)
    p.add_argument("--rss-bound", type=float, default=0.25)
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args()
    record_run("soak", run(args), SECTION, section, not args.no_doc, hidden=("samples",))

if __name__ == "__main__":
    main()
