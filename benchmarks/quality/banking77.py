"""Fine-tuning quality on BANKING77, through the service with its default options.

    .venv/bin/python -m benchmarks.quality.banking77     # --per-intent 10 --eval-per-intent 4

Starts the embedded stack (Ray head, control, vLLM inference), loads two tables through the
Data API: `per-intent` training examples of each of the 77 intents (770 rows by default) and a
fixed sample of the test set (`eval-per-intent` per intent), then runs one FINETUNE('CREATE')
with the default options and a job-end evaluation on the test sample (classification): the job
itself records the base model's and the tuned model's accuracy and macro-F1. Prompts are the
customers' messages as they are; completions are the intent labels (`card_arrival`), which the
base model has never been told about.

Writes benchmarks/quality/results/banking77.json and prints a table. Option flags (--lr,
--epochs, ...) exist for tuning the defaults; a run recorded in docs/benchmarks.md uses none.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks import machine
from benchmarks.results import save
from finetune.control.v1 import evaluations_pb2, jobs_pb2
from services.cli import views
from services.cli.client import FinetuneClient
from services.cli.stack import LocalStack, StackConfig
from services.common.base_models import DEFAULT_BASE_MODEL

# A copy of the data set (CC BY 4.0, LICENSE and README.md beside it) so a clone runs alone.
DATASET = Path(__file__).resolve().parents[1] / "data" / "banking77"
RESULTS = Path(__file__).resolve().parent / "results"
TRAIN_TABLE = "banking77.public.train"
EVAL_TABLE = "banking77.public.test_sample"
MODEL = "banking77.public.intents"
console = Console()


def sample(path: Path, per_label: int, seed: int) -> list[dict]:
    """`per_label` rows of each category, picked by seed, in a shuffled order."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            by_label[row["category"]].append(row)
    rng = random.Random(seed)
    rows = [r for label in sorted(by_label) for r in rng.sample(by_label[label], per_label)]
    rng.shuffle(rows)
    return rows


def _noting_first_step(updates, first_step: list[float]):
    """The Watch stream as it is, noting when the first optimizer step was reported (progress
    reports are rate-limited to one a second, so this is within a second)."""
    for update in updates:
        if update.step >= 1 and not first_step:
            first_step.append(time.monotonic())
        yield update


def validation_by_epoch(results_csv: str) -> list[float]:
    """The validation loss after each epoch, from the job's training_results.csv."""
    rows = csv.DictReader(results_csv.splitlines())
    return [round(float(r["validation_loss"]), 4) for r in rows if r.get("validation_loss")]


def metric(evaluation, name: str) -> float | None:
    return evaluation.metrics[name] if name in evaluation.metrics else None


def run(args) -> dict:
    train = [{"prompt": r["text"], "completion": r["category"]}
             for r in sample(args.dataset / "train.csv", args.per_intent, args.seed)]
    test = [{"prompt": r["text"], "label": r["category"]}
            for r in sample(args.dataset / "test.csv", args.eval_per_intent, args.seed + 1)]
    options = {k: v for k, v in {"learning_rate": args.lr, "max_epochs": args.epochs,
                                 "batch_size": args.batch_size, "lora_rank": args.rank,
                                 "lora_alpha": args.alpha,
                                 "lora_dropout": args.dropout}.items() if v}
    home = Path(args.home or tempfile.mkdtemp(prefix="banking77-"))
    load_before = os.getloadavg()
    with LocalStack(StackConfig(home=home)) as stack, \
            FinetuneClient(stack.control_address, stack.inference_address,
                           stack.admin_key()) as client:
        started = time.monotonic()
        first_step: list[float] = []   # when a Watch update first showed step 1 (T3)
        created_at = None
        if args.attach:   # a job an earlier run of this script started, in the same --home
            job = client.get_job(args.attach)
            console.print(f"following job {job.id} again")
        else:
            client.load_rows(TRAIN_TABLE, train, replace=True)
            client.load_rows(EVAL_TABLE, test, replace=True)
            evaluation = evaluations_pb2.JobEvaluationOptions(
                query=f"SELECT prompt, label FROM {EVAL_TABLE}",
                task=evaluations_pb2.CLASSIFICATION)   # generation: the service's defaults
            created_at = time.monotonic()
            job = client.create_job(MODEL, DEFAULT_BASE_MODEL, f"SELECT prompt, completion FROM "
                                    f"{TRAIN_TABLE}", evaluation=evaluation, **options)
            console.print(f"job {job.id}: {len(train)} training rows, {len(test)} evaluation "
                          f"rows, options {dict(options) or 'defaults'}")
        job = views.follow_job(_noting_first_step(client.watch_job(job.id), first_step), job)
        job = client.get_job(job.id)
        wall_s = time.monotonic() - started
        events = list(client.job_events(job.id))
        results_csv = client.download_artifact(MODEL, "training_results.csv").decode() \
            if job.status == jobs_pb2.SUCCESS else ""
        tuned_predictions = client.evaluation_results(
            job.tuned_evaluation.id, "predictions.csv").decode() \
            if job.tuned_evaluation.id else ""
        # The job-end evaluation answers among the labels (the default); the same model asked
        # freely, beside it, shows what the constraint adds.
        free = client.wait_evaluation(client.evaluate_model(
            MODEL, f"SELECT prompt, label FROM {EVAL_TABLE}", "CLASSIFICATION",
            free_form=True).id) if job.status == jobs_pb2.SUCCESS else None
        free_predictions = client.evaluation_results(free.id, "predictions.csv").decode() \
            if free is not None else ""
    base, tuned = job.base_evaluation, job.tuned_evaluation
    # Training ends with the trainer's last progress report; the job-end evaluation follows.
    trained_at = [e.time.ToDatetime() for e in events if e.type == "training.progress"][-1:]
    o = job.options
    return {
        "benchmark": "banking77",
        "machine": {**machine.describe(), "load_average_start": machine.load(load_before),
                    "load_average_end": machine.load()},
        "data": {"training_rows": len(train), "evaluation_rows": len(test),
                 "per_intent": args.per_intent, "eval_per_intent": args.eval_per_intent,
                 "seed": args.seed},
        "job": {"id": job.id, "status": jobs_pb2.JobStatus.Name(job.status),
                "error": job.error.message, "wall_s": round(wall_s, 1),
                "training_s": round((trained_at[0] - job.started_on.ToDatetime()).total_seconds(),
                                    1) if trained_at and job.started_on.seconds else None,
                "evaluation_s": round((job.finished_on.ToDatetime() - trained_at[0])
                                      .total_seconds(), 1) if trained_at else None,
                "create_to_first_step_s": round(first_step[0] - created_at, 1)
                if first_step and created_at is not None else None,
                "trained_tokens": job.trained_tokens,
                "training_loss": job.training_result.training_loss,
                "options": {"max_epochs": o.max_epochs, "batch_size": o.batch_size,
                            "learning_rate": o.learning_rate, "lora_rank": o.lora_rank,
                            "lora_alpha": o.lora_alpha, "lora_dropout": o.lora_dropout},
                "explicit_options": options,
                "validation_loss_by_epoch": validation_by_epoch(results_csv),
                "precision": next((e.message for e in events
                                   if e.message.startswith("training precision")), None),
                "stop_reason": next((e.message for e in events
                                     if "early stopping" in e.message), None)},
        "base": {"accuracy": metric(base, "accuracy"), "macro_f1": metric(base, "macro_f1"),
                 "weighted_f1": metric(base, "weighted_f1")},
        "tuned": {"accuracy": metric(tuned, "accuracy"), "macro_f1": metric(tuned, "macro_f1"),
                  "weighted_f1": metric(tuned, "weighted_f1")},
        "tuned_free_form": {"accuracy": metric(free, "accuracy"),
                            "macro_f1": metric(free, "macro_f1"),
                            "weighted_f1": metric(free, "weighted_f1")} if free else None,
        "constrained_to_labels": not tuned.generation.free_form,
        "tuned_errors": error_kinds(tuned_predictions, {r["completion"] for r in train}),
        "tuned_free_form_errors": error_kinds(free_predictions,
                                              {r["completion"] for r in train}),
        "evaluation_ids": [base.id, tuned.id] + ([free.id] if free else []),
    }


def error_kinds(predictions_csv: str, labels: set[str]) -> dict:
    """The tuned model's wrong answers by kind: another intent's label, or no label at all
    (which a constrained choice among the labels would turn into a guess)."""
    rows = list(csv.DictReader(predictions_csv.splitlines())) if predictions_csv else []
    wrong = [r for r in rows if r["correct"] != "true"]
    not_a_label = [r for r in wrong if r["prediction"].strip() not in labels]
    return {"rows": len(rows), "wrong": len(wrong), "another_label": len(wrong) - len(not_a_label),
            "not_a_label": len(not_a_label),
            "not_a_label_examples": [r["prediction"][:80] for r in not_a_label[:10]]}


def show(result: dict) -> None:
    table = Table("model", "accuracy", "macro-F1", "weighted-F1")
    for name in ("base", "tuned", "tuned_free_form"):
        m = result[name]
        if m is None:
            continue
        table.add_row(name, *(f"{m[k]:.3f}" if m[k] is not None else "-"
                              for k in ("accuracy", "macro_f1", "weighted_f1")))
    console.print(table)
    console.print({k: result["job"][k] for k in ("status", "wall_s", "training_s", "evaluation_s",
                                                 "trained_tokens", "options", "error")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--per-intent", type=int, default=10)
    p.add_argument("--eval-per-intent", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", default="", help="stack home (default: a new temp folder)")
    p.add_argument("--attach", default="", help="follow this job of --home's stack instead of "
                   "starting one (after the stack was stopped: control picks the job up again)")
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--alpha", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--output", type=Path, default=RESULTS / "banking77.json")
    args = p.parse_args()
    result = run(args)
    save(result, args.output)
    show(result)


if __name__ == "__main__":
    main()
