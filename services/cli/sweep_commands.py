"""`finetune sweeps ...`: hyperparameter sweeps, each trial a fine-tuning job; the best trial
becomes the model.

    finetune sweeps create shop.public.router smollm2-135m-instruct \\
        "SELECT prompt, completion FROM shop.public.tickets" \\
        --grid lr=1e-3,2e-3 --grid rank=8,16 --max-jobs 4 --wait
    finetune sweeps create shop.public.router2 smollm2-135m-instruct "SELECT ..." \\
        --range lr=1e-4:3e-3:log --choice rank=8,16 --trials 6 --seed 7
    finetune sweeps list; finetune sweeps show sw_...; finetune sweeps cancel sw_...
    finetune sweeps chart sw_... --out sweep.png   # the trials' losses side by side
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from finetune.control.v1 import evaluations_pb2, sweeps_pb2
from services.cli import views
from services.cli.client import FinetuneClient, evaluation_task_value
from services.cli.connection import client as _client
from services.cli.connection import rpc_errors as _rpc
from services.cli.job_commands import TASKS
from services.console.charts import Chart, ChartError, loss_chart_from_csv, loss_chart_from_events

console = views.console

sweeps_app = typer.Typer(help="Hyperparameter sweeps: trials as fine-tuning jobs, the best "
                              "one registered.", no_args_is_help=True)

# Short spellings on the command line.
ALIASES = {"lr": "learning_rate", "rank": "lora_rank", "alpha": "lora_alpha",
           "dropout": "lora_dropout", "epochs": "max_epochs", "batch": "batch_size",
           "patience": "early_stopping_patience"}
TERMINAL_NAMES = {"SUCCEEDED", "FAILED", "CANCELLED"}


def _name(text: str) -> str:
    name = text.strip().lower().replace("-", "_")
    return ALIASES.get(name, name)


def parse_values(spec: str) -> tuple[str, list[float]]:
    """`lr=1e-3,2e-3` -> ("learning_rate", [0.001, 0.002])."""
    name, sep, values = spec.partition("=")
    if not sep or not values.strip():
        raise ValueError(f"{spec!r}: write option=value,value,... (e.g. lr=1e-3,2e-3)")
    try:
        return _name(name), [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{spec!r}: the values must be numbers") from None


def parse_range(spec: str) -> tuple[str, float, float, bool]:
    """`lr=1e-4:1e-2:log` -> ("learning_rate", 0.0001, 0.01, True)."""
    name, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ValueError(f"{spec!r}: write option=min:max or option=min:max:log")
    try:
        return _name(name), float(parts[0]), float(parts[1]), len(parts) == 3
    except ValueError:
        raise ValueError(f"{spec!r}: min and max must be numbers") from None


@sweeps_app.command()
@_rpc
def create(model: str = typer.Argument(..., help="the best trial's model: name or db.schema.name"),
           base_model: str = typer.Argument(...),
           training_query: str = typer.Argument(..., help="SELECT with prompt, completion"),
           grid: list[str] = typer.Option([], help="option=v1,v2,...: every combination "
                                                   "(lr, epochs, batch, rank, alpha, dropout, "
                                                   "seed, patience)"),
           choice: list[str] = typer.Option([], help="random search: option=v1,v2,... to draw "
                                                     "from"),
           range_: list[str] = typer.Option([], "--range", help="random search: option=min:max "
                                                                "or option=min:max:log"),
           trials: int = typer.Option(0, help="random search: trials (0: --max-jobs)"),
           seed: int = typer.Option(0, help="random search: the draws' seed"),
           max_jobs: int = typer.Option(0, help="0: every trial of the space"),
           max_tokens: int = typer.Option(0, help="trained tokens of all trials (0: no limit)"),
           max_concurrent: int = typer.Option(0, help="trials at once (0: the cluster's)"),
           objective: str = typer.Option("", help="validation_loss (default), training_loss, or "
                                                  "an evaluation metric with --eval-query"),
           delete_candidates: bool = typer.Option(False, help="delete the other trials' models"),
           validation_query: str = typer.Option(""),
           epochs: int = typer.Option(0, help="every trial's max_epochs (0: default)"),
           learning_rate: float = typer.Option(0.0), batch_size: int = typer.Option(0),
           lora_rank: int = typer.Option(0), num_workers: int = typer.Option(0),
           task: str = typer.Option("instruction", help=", ".join(TASKS)),
           eval_query: str = typer.Option("", help="evaluate every trial on this query "
                                                   "(prompt, label) and rank by its metric"),
           eval_task: str = typer.Option("classification"),
           request_id: str = typer.Option("", help="idempotency key"),
           wait: bool = typer.Option(False, help="follow progress until the sweep ends")):
    """Start a sweep: a grid (--grid) or random search (--range/--choice with --trials)."""
    if grid and (choice or range_):
        raise ValueError("--grid is a grid search; --choice and --range a random one: pick one")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: {', '.join(TASKS)}")
    values = dict(parse_values(s) for s in (grid or choice))
    ranges = {name: (low, high) for name, low, high, _ in map(parse_range, range_)}
    logs = [name for name, _, _, log in map(parse_range, range_) if log]
    if choice and not ranges and not trials and not max_jobs:
        raise ValueError("a random search needs --trials or --max-jobs")
    evaluation = evaluations_pb2.JobEvaluationOptions(
        query=eval_query, task=evaluation_task_value(eval_task)) if eval_query else None
    with _client() as client:
        sweep = client.create_sweep(
            model, base_model, training_query, grid=values, ranges=ranges, log_scale=logs,
            random_search=bool(choice or ranges), trials=trials, seed=seed,
            max_jobs=max_jobs, max_trained_tokens=max_tokens, max_concurrent=max_concurrent,
            objective=objective, delete_candidates=delete_candidates,
            validation_query=validation_query, request_id=request_id or None,
            max_epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
            lora_rank=lora_rank, num_workers=num_workers, task_type=TASKS[task],
            evaluation=evaluation)
        console.print(f"created {sweep.id}: {len(sweep.trials)} trials, about "
                      f"{sweep.estimated_trained_tokens} trained tokens, "
                      f"{sweep.budget.max_concurrent} at a time, ranked by {sweep.objective}")
        if wait:
            sweep = follow(client, sweep)
            console.print(sweep_details(sweep))
            if status_name(sweep) != "SUCCEEDED":
                raise typer.Exit(1)


@sweeps_app.command("list")
@_rpc
def list_():
    """The sweeps your roles own (an admin sees all), newest first."""
    with _client() as client:
        console.print(sweeps_table(client.list_sweeps()))


@sweeps_app.command()
@_rpc
def show(sweep_id: str, watch: bool = typer.Option(False, help="live progress until it ends")):
    """A sweep: progress, budget, usage and the table of trials (the best marked *)."""
    with _client() as client:
        sweep = client.get_sweep(sweep_id)
        if watch:
            sweep = follow(client, sweep)
    console.print(sweep_details(sweep))


@sweeps_app.command()
@_rpc
def cancel(sweep_id: str):
    """Cancel a sweep and its running trials (no model is registered)."""
    with _client() as client:
        sweep = client.cancel_sweep(sweep_id)
    console.print(f"{sweep.id}: {status_name(sweep)}")


@sweeps_app.command()
@_rpc
def chart(sweep_id: str, out: Path = typer.Option(Path("sweep_losses.png"),
                                                  help="the PNG to write")):
    """The trials' loss curves side by side (training loss lines, validation loss points)."""
    with _client() as client:
        sweep = client.get_sweep(sweep_id)
        curves = trial_curves(client, sweep)
    if not curves:
        raise ValueError(f"{sweep_id}: no trial has reported a loss yet")
    out.write_bytes(comparison_png(sweep, curves))
    console.print(f"wrote {out} ({len(curves)} trials)")


# -- showing a sweep --------------------------------------------------------------------------

def status_name(sweep) -> str:
    return sweeps_pb2.SweepStatus.Name(sweep.status).removeprefix("SWEEP_")


def trial_status(trial) -> str:
    return sweeps_pb2.TrialStatus.Name(trial.status).removeprefix("TRIAL_")


def values_text(trial) -> str:
    return " ".join(f"{name}={value:g}" for name, value in sorted(trial.parameters.items()))


def _loss(trial, field: str) -> str:
    return f"{getattr(trial, field):.4f}" if trial.HasField(field) else ""


def trials_table(sweep) -> Table:
    table = Table("#", "values", "status", "progress", "training loss", "validation loss",
                  sweep.objective, "tokens", "job", "model / error")
    for t in sweep.trials:
        objective = f"{t.objective:.4f}" if t.HasField("objective") else ""
        note = t.model or (t.error.splitlines()[0][:60] if t.error else "")
        table.add_row(f"{t.index}{'*' if t.best else ''}", values_text(t), trial_status(t),
                      f"{t.progress:.0%}", _loss(t, "training_loss"),
                      _loss(t, "validation_loss"), objective,
                      str(t.trained_tokens or t.estimated_trained_tokens), t.job_id, note)
    return table


def sweep_details(sweep) -> Table:
    b = sweep.budget
    outer = Table(show_header=False, box=None)
    outer.add_column(style="bold")
    outer.add_column()
    for name, value in [
        ("id", sweep.id), ("model", sweep.model), ("base_model", sweep.base_model),
        ("status", status_name(sweep) + (f": {sweep.error}" if sweep.error else "")),
        ("progress", f"{sweep.progress:.0%} of {len(sweep.trials)} trials"),
        ("objective", f"{sweep.objective} ({'lower' if sweep.minimize else 'higher'} is "
                      "better)"),
        ("budget", f"{b.max_jobs} jobs, "
                   f"{b.max_trained_tokens or 'unlimited'} trained tokens, "
                   f"{b.max_concurrent} at a time"),
        ("usage", f"{sweep.trained_tokens} trained tokens (about "
                  f"{sweep.estimated_trained_tokens} estimated), {sweep.credits:.4f} credits"),
        ("best", f"trial {sweep.best_trial}" if sweep.best_trial else ""),
        ("created", views.when(sweep.created_on)), ("finished", views.when(sweep.finished_on)),
    ]:
        outer.add_row(name, value)
    outer.add_row("trials", trials_table(sweep))
    return outer


def sweeps_table(sweeps) -> Table:
    table = Table("id", "model", "status", "progress", "trials", "best", "trained tokens",
                  "created")
    for s in sweeps:
        table.add_row(s.id, s.model, status_name(s), f"{s.progress:.0%}", str(len(s.trials)),
                      str(s.best_trial or ""), str(s.trained_tokens), views.when(s.created_on))
    return table


def follow(client: FinetuneClient, sweep) -> sweeps_pb2.Sweep:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"{sweep.model} {sweep.id}", total=1.0, status="")
        for update in client.watch_sweep(sweep.id):
            running = [t.index for t in update.trials if trial_status(t) in ("PENDING",
                                                                              "IN_PROGRESS")]
            progress.update(task, completed=update.progress, status=status_name(update) + (
                f" (trial {', '.join(map(str, running))})" if running else ""))
    return client.get_sweep(sweep.id)


# -- the comparison chart ---------------------------------------------------------------------

def trial_curves(client: FinetuneClient, sweep) -> dict[int, Chart]:
    """Each trial's losses by step: its model's training_results.csv while it has a model,
    else the losses its job reported in its events."""
    curves = {}
    for trial in sweep.trials:
        if not trial.job_id:
            continue
        try:
            if trial.model:
                chart = loss_chart_from_csv(
                    client.download_artifact(trial.model, "training_results.csv").decode())
            else:
                chart = loss_chart_from_events(client.job_events(trial.job_id))
        except ChartError as exc:
            console.print(f"[yellow]trial {trial.index}: {exc}")
            continue
        if chart.points:
            curves[trial.index] = chart
    return curves


def comparison_png(sweep, curves: dict[int, Chart]) -> bytes:
    """One axis, one colour per trial: training loss as a line, validation loss as points on
    a dashed line; the best trial drawn thicker."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), dpi=100)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    by_index = {t.index: t for t in sweep.trials}
    for n, (index, chart) in enumerate(sorted(curves.items())):
        trial = by_index[index]
        colour = colours(n % 10)
        width = 2.4 if trial.best else 1.1
        label = f"trial {index}{' (best)' if trial.best else ''}: {values_text(trial)}"
        for series in chart.series:
            points = [(x, y) for x, y in zip(chart.x, series.values, strict=True)
                      if y is not None and math.isfinite(y)]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if series.points_only:
                ax.plot(xs, ys, "o--", color=colour, linewidth=width * 0.6, markersize=5)
            else:
                ax.plot(xs, ys, "-", color=colour, linewidth=width, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (line: training, dots: validation)")
    ax.set_title(f"{sweep.model}: {len(curves)} trials, ranked by {sweep.objective}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

