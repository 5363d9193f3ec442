"""`finetune demo`: the main job on sample data, through the public API only.

Loads the sample support tickets (deploy/samples), fine-tunes the default base model to route them
to queue codes with the service's default options, answers a known and an unseen ticket with the
tuned and the base model, and ends with ML.EVALUATE of both on held-out tickets that no training
row was written from.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from rich.table import Table

from finetune.control.v1 import evaluations_pb2, jobs_pb2
from services.cli import views
from services.cli.client import FinetuneClient
from services.common.base_models import DEFAULT_BASE_MODEL

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
TRAINING_FILE = SAMPLES / "support_tickets.csv"
HELD_OUT_FILE = SAMPLES / "held_out_tickets.csv"
TABLE = "demo.public.support_tickets"
HELD_OUT_TABLE = "demo.public.held_out_tickets"
MODEL = "demo.public.ticket_router"
# One ticket from the training table and one from the held-out table.
PROBES = [("I was charged twice for my subscription this month", "BLX-207"),
          ("My order never showed up and tracking is empty", "SHP-552")]


def run_demo(client: FinetuneClient) -> bool:
    console = views.console
    console.rule("1. load the sample tables")
    for name, path in ((TABLE, TRAINING_FILE), (HELD_OUT_TABLE, HELD_OUT_FILE)):
        table = client.load_table(name, path, replace=True)
        console.print(f"{table.name}: {table.row_count} rows ({path.name})")

    console.rule("2. FINETUNE('CREATE') with the service's default options")
    query = f"SELECT prompt, completion FROM {TABLE}"
    _drop_previous_model(client)
    # Epochs, batch size and learning rate are the service's choice; the seed makes reruns alike.
    job = client.create_job(MODEL, DEFAULT_BASE_MODEL, query, seed=7)
    console.print(f"job {job.id}: {query}")
    job = views.follow_job(client.watch_job(job.id), job)
    job = client.get_job(job.id)
    console.rule("3. FINETUNE('DESCRIBE')")
    console.print(views.job_details(job))
    if job.status != jobs_pb2.SUCCESS:
        console.print(f"[red]the job ended {views.status_name(job)}")
        return False

    console.rule("4. COMPLETE: fine-tuned model vs base model")
    answers = Table("prompt", "expected", "model", "answer", "usage")
    for prompt, expected in PROBES:
        for model in (MODEL, DEFAULT_BASE_MODEL):
            res = client.complete(model, prompt, max_tokens=24)
            answers.add_row(prompt, expected, model, res.text.strip(), views.usage_line(res.usage))
    console.print(answers)

    return _evaluate(client, console)


def _drop_previous_model(client: FinetuneClient) -> None:
    """A rerun in the same home replaces the model an earlier demo registered."""
    try:
        client.delete_model(MODEL)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
    else:
        views.console.print(f"deleted {MODEL} from an earlier run")


def _evaluate(client: FinetuneClient, console) -> bool:
    """ML.EVALUATE of the base and the tuned model on the held-out tickets, side by side."""
    console.rule("5. ML.EVALUATE on held-out tickets: base model vs fine-tuned model")
    query = f"SELECT prompt, label FROM {HELD_OUT_TABLE}"
    # Base first, so that the table's difference column reads as what fine-tuning gained.
    started = [client.evaluate_model(m, query, "classification")
               for m in (DEFAULT_BASE_MODEL, MODEL)]
    views.follow_evaluations([client.watch_evaluation(e.id) for e in started])
    done = [client.get_evaluation(e.id) for e in started]
    failed = [e for e in done if e.status != evaluations_pb2.EVALUATION_SUCCEEDED]
    for e in failed:
        console.print(f"[red]{e.id} ({e.model}) {views.evaluation_status(e)}: {e.error}")
    if failed:
        return False
    console.print(views.metrics_side_by_side(done))
    console.print(views.labels_side_by_side(done))
    for e in done:
        console.print(f"accuracy of {e.model} on {e.rows} held-out tickets: "
                      f"[bold]{e.metrics['accuracy']:.1%}[/bold]")
    return True
