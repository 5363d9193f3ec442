"""How the CLI shows jobs, models and answers (rich tables and progress bars)."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from finetune.control.v1 import jobs_pb2

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
    o = job.options
    rows.append(("options", f"epochs={o.max_epochs} lr={o.learning_rate:g} batch={o.batch_size} "
                            f"rank={o.lora_rank} alpha={o.lora_alpha} dropout={o.lora_dropout:g} "
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
