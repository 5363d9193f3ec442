"""`finetune demo`: the main job on sample data, through the public API only."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from finetune.control.v1 import jobs_pb2
from services.cli import views
from services.cli.client import FinetuneClient
from services.common.base_models import DEFAULT_BASE_MODEL

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "support_tickets.csv"
TABLE = "demo.public.support_tickets"
MODEL = "demo.public.ticket_router"
# One ticket from the training table and one the model has never seen.
PROBES = [("I was charged twice for my subscription this month", "BLX-207"),
          ("My order never showed up and tracking is empty", "SHP-552")]


def run_demo(client: FinetuneClient) -> bool:
    console = views.console
    console.rule("1. load the sample table")
    table = client.load_table(TABLE, SAMPLE, replace=True)
    console.print(f"{table.name}: {table.row_count} rows ({SAMPLE.name})")

    console.rule("2. FINETUNE('CREATE')")
    query = f"SELECT prompt, completion FROM {TABLE}"
    # 40 rows: smaller batches than the default give the adapter enough optimizer steps.
    job = client.create_job(MODEL, DEFAULT_BASE_MODEL, query, max_epochs=6, batch_size=4,
                            learning_rate=0.001, seed=7)
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
    return True
