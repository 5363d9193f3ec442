"""`finetune jobs ...`: what FINETUNE adds beyond CREATE/SHOW/DESCRIBE/CANCEL.

    finetune jobs estimate smollm2-135m-instruct "SELECT prompt, completion FROM t" --epochs 2
    finetune jobs describe ft_...          # details, data lineage and the last events
    finetune jobs events ft_... --all

Registered in main.py as `app.add_typer(jobs_app, name="jobs")`.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from finetune.control.v1 import jobs_pb2
from services.cli import views
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console

jobs_app = typer.Typer(help="Fine-tuning jobs: estimates, lineage and event logs.",
                       no_args_is_help=True)

TASKS = {"instruction": jobs_pb2.INSTRUCTION, "chat": jobs_pb2.CHAT,
         "continued-pretraining": jobs_pb2.CONTINUED_PRETRAINING}
LEVEL_STYLES = {jobs_pb2.EVENT_INFO: "", jobs_pb2.EVENT_WARNING: "yellow",
                jobs_pb2.EVENT_ERROR: "red"}


@jobs_app.command()
@_rpc
def estimate(base_model: str = typer.Argument(...),
             training_query: str = typer.Argument(..., help="SELECT with the task's columns"),
             validation_query: str = typer.Option(""),
             model: str = typer.Option("", help="output model name, to check it is free"),
             epochs: int = typer.Option(0, help="max_epochs 1-10 (0: base model default)"),
             task: str = typer.Option("instruction", help=", ".join(TASKS)),
             seed: int = typer.Option(0), batch_size: int = typer.Option(0),
             from_model: str = typer.Option("", help="continue training this model")):
    """A dry run of CREATE: rows, tokens, truncated rows and credits, nothing started."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: {', '.join(TASKS)}")
    with _client() as client:
        e = client.estimate_job(base_model, training_query, validation_query, model,
                                max_epochs=epochs, task_type=TASKS[task], seed=seed,
                                batch_size=batch_size, from_model=from_model)
    out = Table(show_header=False, box=None)
    out.add_column(style="bold")
    out.add_column()
    rows = [("base model", e.base_model),
            ("row limit", f"{e.max_rows} ({e.epochs} epochs)"),
            ("training", _snapshot(e.training)),
            ("validation", _validation(e.validation_source, e.validation)),
            ("tokens per epoch", str(e.tokens_per_epoch)),
            ("trained tokens", f"{e.trained_tokens} ({e.epochs} epochs)"),
            ("credits", f"{e.credits:.6f} ({e.credits_per_million_tokens:g} per million "
                        "tokens)")]
    for name, value in rows:
        out.add_row(name, value)
    console.print(out)
    for note in e.notes:
        console.print(f"[dim]- {note}")


@jobs_app.command()
@_rpc
def describe(job_id: str, last: int = typer.Option(5, help="how many recent events to show")):
    """DESCRIBE with the job's data lineage and its last events."""
    with _client() as client:
        job = client.get_job(job_id)
        events = list(client.list_job_events(job_id, last, newest_first=True).events) \
            if last > 0 else []
    console.print(views.job_details(job))
    lineage = Table("data", "rows", "tokens (prompt + completion)", "truncated", "sha256",
                    title="lineage")
    for name, snapshot in (("training", job.training_snapshot),
                           ("validation", job.validation_snapshot)):
        if snapshot.uri:
            lineage.add_row(name, str(snapshot.rows),
                            f"{snapshot.prompt_tokens} + {snapshot.completion_tokens}",
                            str(snapshot.truncated_rows), snapshot.sha256)
    console.print(lineage)
    console.print(f"validation: {_validation(job.validation_source, job.validation_snapshot)}; "
                  f"estimated trained tokens {job.estimated_trained_tokens}")
    if events:
        console.print(_events_table(reversed(events), title=f"last {len(events)} events"))


@jobs_app.command()
@_rpc
def events(job_id: str, newest_first: bool = typer.Option(False),
           page_size: int = typer.Option(50), page_token: str = typer.Option(""),
           all_pages: bool = typer.Option(False, "--all", help="every event, not one page")):
    """The job's event log (like OpenAI's fine-tuning job events)."""
    with _client() as client:
        if all_pages:
            console.print(_events_table(client.job_events(job_id, newest_first)))
            return
        page = client.list_job_events(job_id, page_size, page_token, newest_first)
    console.print(_events_table(page.events))
    if page.next_page_token:
        console.print(f"more: --page-token {page.next_page_token}")


def _events_table(events, title: Optional[str] = None) -> Table:
    table = Table("time", "level", "type", "message", "metrics", title=title)
    for e in events:
        style = LEVEL_STYLES.get(e.level, "")
        metrics = " ".join(f"{k}={v:g}" for k, v in sorted(e.metrics.items()))
        table.add_row(views.when(e.time), jobs_pb2.EventLevel.Name(e.level).removeprefix(
            "EVENT_"), e.type, e.message, metrics, style=style)
    return table


def _snapshot(s) -> str:
    return (f"{s.rows} rows, {s.prompt_tokens} prompt + {s.completion_tokens} completion "
            f"tokens, {s.truncated_rows} truncated")


def _validation(source, snapshot) -> str:
    if source == jobs_pb2.VALIDATION_QUERY:
        return "validation query: " + _snapshot(snapshot)
    if source == jobs_pb2.HOLDOUT:
        return "held out of the training rows: " + _snapshot(snapshot)
    return "none (too few rows to hold any out)"
