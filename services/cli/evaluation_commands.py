"""`finetune evaluate` and `finetune evaluations ...`: ML.EVALUATE for base and fine-tuned models.

    finetune evaluate support.public.router "SELECT prompt, label FROM support.public.test" \\
        --compare smollm2-135m-instruct          # both models, metrics side by side
    finetune evaluations list --model support.public.router
    finetune evaluations show ev_... --labels     # per-label precision / recall / F1
    finetune evaluations compare ev_a ev_b
    finetune evaluations download ev_... --file predictions.csv -o predictions.csv
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from services.cli import views
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc

console = views.console

evaluations_app = typer.Typer(help="Evaluations: metrics of a model on held-out data.",
                              no_args_is_help=True)

TASK_HELP = "classification | text_generation | question_answering"


def evaluate(model: str = typer.Argument(..., help="fine-tuned or base model"),
             query: str = typer.Argument(..., help="SELECT with prompt and label (or completion)"),
             task: str = typer.Option("classification", help=TASK_HELP),
             compare: Optional[str] = typer.Option(None, help="a second model, side by side"),
             max_tokens: int = typer.Option(0, help="0: the longest label or answer + 4 tokens"),
             concurrency: int = typer.Option(0, help="requests in flight (0: service default)"),
             free_form: bool = typer.Option(False, help="classification: answer freely instead "
                                                        "of one of the query's labels"),
             labels: bool = typer.Option(False, help="also per-label metrics"),
             wait: bool = typer.Option(True, help="show progress and the results")):
    """Evaluate a model (and optionally a second one) on an evaluation query."""
    models = [model] + ([compare] if compare else [])
    with _client() as client:
        started = [client.evaluate_model(m, query, task, max_tokens=max_tokens,
                                         concurrency=concurrency, free_form=free_form)
                   for m in models]
        for e in started:
            console.print(f"started {e.id} for {e.model}")
        if not wait:
            return
        views.follow_evaluations([client.watch_evaluation(e.id) for e in started])
        _show_results(client, [client.get_evaluation(e.id) for e in started], labels)


@evaluations_app.command("list")
@_rpc
def list_(model: str = typer.Option("", help="only this model's")):
    """Evaluations of a model, or of the whole account, newest first."""
    with _client() as client:
        console.print(views.evaluations_table(client.list_evaluations(model)))


@evaluations_app.command()
@_rpc
def show(evaluation_id: str, labels: bool = typer.Option(False, help="per-label metrics")):
    """One evaluation: settings, status and metrics."""
    with _client() as client:
        e = client.get_evaluation(evaluation_id)
        console.print(views.evaluation_details(e))
        if e.metrics:
            console.print(views.metrics_side_by_side([e]))
        if labels and e.labels:
            console.print(views.labels_side_by_side([e]))


@evaluations_app.command()
@_rpc
def compare(first: str, second: str,
            labels: bool = typer.Option(False, help="per-label metrics too")):
    """Two evaluations' metrics side by side, with the difference (second - first)."""
    with _client() as client:
        _show_results(client, [client.get_evaluation(first), client.get_evaluation(second)],
                      labels)


@evaluations_app.command()
@_rpc
def download(evaluation_id: str,
             file: str = typer.Option("metrics.csv", help="metrics.csv or predictions.csv"),
             output: Optional[Path] = typer.Option(None, "-o", help="default: stdout")):
    """Download an evaluation's metrics or predictions as CSV."""
    with _client() as client:
        data = client.evaluation_results(evaluation_id, file)
    if output:
        output.write_bytes(data)
        console.print(f"wrote {len(data)} bytes to {output}")
    else:
        sys.stdout.buffer.write(data)


@evaluations_app.command()
@_rpc
def cancel(evaluation_id: str):
    """Stop a running evaluation."""
    with _client() as client:
        e = client.cancel_evaluation(evaluation_id)
    console.print(f"{e.id}: {views.evaluation_status(e)}")


def _show_results(client, evaluations, labels: bool) -> None:
    failed = [e for e in evaluations if e.error]
    for e in failed:
        console.print(f"[red]{e.id} ({e.model}) {views.evaluation_status(e)}: {e.error}")
    done = [e for e in evaluations if e.metrics]
    if done:
        console.print(views.metrics_side_by_side(done))
        if labels and any(e.labels for e in done):
            console.print(views.labels_side_by_side(done))
    if failed:
        raise typer.Exit(1)
