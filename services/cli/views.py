"""How the CLI shows jobs, models and answers (rich tables and progress bars)."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from finetune.control.v1 import evaluations_pb2, generations_pb2, jobs_pb2

console = Console()
TERMINAL = {jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED}


def status_name(job) -> str:
    return jobs_pb2.JobStatus.Name(job.status)


def when(ts) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime(tzinfo=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def jobs_table(jobs) -> Table:
    table = Table("id", "status", "progress", "model", "base model", "created", "trained tokens")
    for job in jobs:
        table.add_row(job.id, status_name(job), f"{job.progress:.0%}", job.model, job.base_model,
                      when(job.created_on), str(job.trained_tokens))
    return table


def job_details(job) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", job.id), ("status", status_name(job)), ("progress", f"{job.progress:.0%}"),
        ("model", job.model), ("base_model", job.base_model),
        ("created_on", when(job.created_on)), ("started_on", when(job.started_on)),
        ("finished_on", when(job.finished_on)), ("training_data", job.training_data),
        ("validation_data", job.validation_data),
        ("rows", f"{job.training_rows} training, {job.validation_rows} validation, "
                 f"{job.truncated_rows} truncated"),
        ("epoch / step", f"{job.epoch} / {job.step} of {job.total_steps}"),
        ("trained_tokens", str(job.trained_tokens)),
        ("training_loss", f"{job.training_result.training_loss:.4f}"),
        ("validation_loss", f"{job.training_result.validation_loss:.4f}"
         if job.training_result.has_validation_loss else ""),
    ]
    if job.error.code or job.error.message:
        rows.append(("error", f"{job.error.code}: {job.error.message}"))
    for role, e in (("base", job.base_evaluation), ("tuned", job.tuned_evaluation)):
        if e.id:
            rows.append((f"evaluation ({role})", f"{e.id} {evaluation_status(e)} " + "  ".join(
                f"{n}={e.metrics[n]:.4f}" for n in _metric_names([e])[:3])))
    o = job.options
    rows.append(("options", f"epochs={o.max_epochs} lr={o.learning_rate:g} batch={o.batch_size} "
                            f"rank={o.lora_rank} alpha={o.lora_alpha} dropout={o.lora_dropout:g} "
                            f"neftune={o.neftune_noise_alpha:g} "
                            f"seed={o.seed} workers={o.num_workers} "
                            f"task={jobs_pb2.TaskType.Name(o.task_type)}"))
    for name, value in rows:
        table.add_row(name, value)
    return table


def follow_job(updates, first) -> "jobs_pb2.FineTuningJob":
    """Shows a live progress bar from a WatchFineTuningJob stream until the job is terminal."""
    last = first
    with Progress(TextColumn("[bold]{task.fields[status]}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("epoch {task.fields[epoch]} step {task.fields[step]}"),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task(first.id, total=1.0, completed=first.progress,
                                 status=status_name(first), epoch=first.epoch, step=first.step,
                                 loss="-")
        for job in updates:
            last = job
            loss = job.training_result.training_loss
            progress.update(task, completed=job.progress, status=status_name(job),
                            epoch=job.epoch, step=job.step, loss=f"{loss:.4f}" if loss else "-")
            if job.status in TERMINAL:
                break
    return last


def usage_line(usage) -> str:
    return (f"prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens} "
            f"total_tokens={usage.total_tokens}")


def now() -> str:
    return datetime.now().strftime("%H:%M:%S")


# -- evaluations ----------------------------------------------------------------------------

TERMINAL_NAMES = {"SUCCEEDED", "FAILED", "CANCELLED"}   # evaluations' and generations'
# The order metrics are shown in; any others the service adds follow, sorted.
METRIC_ORDER = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall",
                "bleu", "rougeL_precision", "rougeL_recall", "rougeL_f1", "exact_match")


def evaluation_status(evaluation) -> str:
    return evaluations_pb2.EvaluationStatus.Name(evaluation.status).removeprefix("EVALUATION_")


def evaluation_task(evaluation) -> str:
    return evaluations_pb2.EvaluationTask.Name(evaluation.task)


def _metric_names(evaluations) -> list[str]:
    names = {n for e in evaluations for n in e.metrics}
    return [n for n in METRIC_ORDER if n in names] + sorted(names - set(METRIC_ORDER))


def evaluations_table(evaluations) -> Table:
    """One row per evaluation: what was scored, on how many rows, and its headline metric."""
    table = Table("id", "model", "task", "status", "rows", "primary metric", "created")
    for e in evaluations:
        primary = (f"{e.primary_metric} {e.metrics[e.primary_metric]:.3f}"
                   if e.primary_metric in e.metrics else "")
        table.add_row(e.id, e.model + (f" ({e.role})" if e.role else ""), evaluation_task(e),
                      evaluation_status(e), f"{e.rows_done}/{e.rows}", primary,
                      when(e.created_on))
    return table


def metrics_side_by_side(evaluations) -> Table:
    """Metrics of one or more evaluations in columns; with two, the difference as well."""
    table = Table("metric", *(f"{e.model}\n{e.id}" for e in evaluations))
    if len(evaluations) == 2:
        table.add_column("difference")
    for name in _metric_names(evaluations):
        values = [e.metrics[name] if name in e.metrics else None for e in evaluations]
        cells = [f"{v:.4f}" if v is not None else "-" for v in values]
        if len(values) == 2:
            first, second = values
            cells.append(f"{second - first:+.4f}"
                         if first is not None and second is not None else "-")
        style = "bold" if any(name == e.primary_metric for e in evaluations) else None
        table.add_row(name, *cells, style=style)
    table.add_row("rows", *(str(e.rows) for e in evaluations))
    return table


def labels_side_by_side(evaluations) -> Table:
    """Per-label precision / recall / F1 (and support) of each evaluation, label by label."""
    table = Table("label", "support")
    for e in evaluations:
        table.add_column(f"P / R / F1\n{e.model}")
    per_eval = [{m.label: m for m in e.labels} for e in evaluations]
    for label in sorted({label for d in per_eval for label in d}):
        found = [d.get(label) for d in per_eval]
        support = next((m.support for m in found if m is not None), 0)
        table.add_row(label, str(support), *(
            f"{m.precision:.2f} / {m.recall:.2f} / {m.f1:.2f}" if m is not None else "-"
            for m in found))
    return table


def evaluation_details(evaluation) -> Table:
    e = evaluation
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    g = e.generation
    for name, value in [
        ("id", e.id), ("model", e.model), ("base_model", e.base_model),
        ("model_version", str(e.model_version)), ("task", evaluation_task(e)),
        ("status", evaluation_status(e)), ("progress", f"{e.progress:.0%} "
                                                       f"({e.rows_done}/{e.rows} rows)"),
        ("query", e.query),
        ("generation", f"max_tokens={g.max_tokens} temperature={g.temperature:g} "
                       f"concurrency={g.concurrency}"),
        ("tokens", f"{e.prompt_tokens} prompt, {e.completion_tokens} completion"),
        ("job", f"{e.job_id} ({e.role})" if e.job_id else ""),
        ("created_on", when(e.created_on)), ("finished_on", when(e.finished_on)),
        ("error", e.error),
    ]:
        if value:
            table.add_row(name, value)
    return table


def follow_evaluations(streams, status=None) -> list:
    """Live progress bars for evaluations (or generations, with their `status`) being watched
    (one stream each); returns the last state of each."""
    status = status or evaluation_status
    last = [None] * len(streams)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[rows]}"),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                  console=console) as progress:
        for i, stream in enumerate(streams):
            task = None
            for e in stream:
                last[i] = e
                if task is None:
                    task = progress.add_task(f"{e.model} {e.id}", total=1.0, rows="",
                                             status="")
                progress.update(task, completed=e.progress, rows=f"{e.rows_done}/{e.rows} rows",
                                status=status(e))
                if status(e) in TERMINAL_NAMES:
                    break
    return last


def generation_status(generation) -> str:
    return generations_pb2.GenerationStatus.Name(generation.status).removeprefix("GENERATION_")


def generations_table(generations) -> Table:
    """One row per batch generation: which model wrote which table, and how far it got."""
    table = Table("id", "model", "into", "status", "rows", "errors", "tokens", "created")
    for g in generations:
        table.add_row(g.id, g.model, g.into, generation_status(g), f"{g.rows_done}/{g.rows}",
                      str(g.rows_failed), f"{g.prompt_tokens} + {g.completion_tokens}",
                      when(g.created_on))
    return table


def generation_details(generation) -> Table:
    g, o = generation, generation.generation
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in [
        ("id", g.id), ("model", g.model), ("base_model", g.base_model),
        ("model_version", str(g.model_version)), ("into", g.into),
        ("status", generation_status(g)),
        ("progress", f"{g.progress:.0%} ({g.rows_done}/{g.rows} rows, "
                     f"{g.rows_failed} with an error)"),
        ("query", g.query),
        ("generation", f"max_tokens={o.max_tokens} temperature={o.temperature:g} "
                       f"concurrency={o.concurrency}"),
        ("tokens", f"{g.prompt_tokens} prompt, {g.completion_tokens} completion"),
        ("runs", str(g.attempts)),
        ("created_on", when(g.created_on)), ("finished_on", when(g.finished_on)),
        ("error", g.error),
    ]:
        if value:
            table.add_row(name, value)
    return table
