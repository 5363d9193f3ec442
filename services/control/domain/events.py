"""The job event log (like OpenAI's fine-tuning job events): what happened to a job, when, with
optional metrics. Pure: events are built here and stored by the caller in the transaction that
made the change, so an event is written exactly when (and as often as) its change is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping

from services.common.base_models import BaseModelSpec
from services.control.domain.datasets import HOLDOUT_FRACTION, MIN_ROWS_FOR_HOLDOUT
from services.control.domain.jobs import Job, JobProgress, JobStatus, SnapshotInfo, ValidationSource


class EventLevel(enum.Enum):
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class EventType:
    CREATED = "job.created"
    SNAPSHOT = "data.snapshot"
    HOLDOUT = "data.holdout"
    TRUNCATION = "data.truncation"
    SUBMITTED = "job.submitted"
    SUBMIT_FAILED = "job.submit_failed"
    STARTED = "job.started"
    PROGRESS = "training.progress"
    SUCCEEDED = "job.succeeded"
    MODEL_REGISTERED = "model.registered"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    EVALUATION_STARTED = "evaluation.started"
    EVALUATION_FINISHED = "evaluation.finished"


@dataclass(frozen=True)
class NewEvent:
    type: str
    message: str
    level: EventLevel = EventLevel.INFO
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: str
    time: datetime
    level: EventLevel
    type: str
    message: str
    metrics: Mapping[str, float]


MAX_EVENT_MESSAGE = 2000


def transition_events(before: JobStatus, after: Job, detail: str = "") -> list[NewEvent]:
    """The events of a status change from `before` to the job's status now (none if equal);
    `detail` says who or what cancelled it."""
    if before is after.status:
        return []
    events = []
    if before is JobStatus.PENDING and after.started_on is not None:
        events.append(NewEvent(EventType.STARTED, "training started"))
    if after.status is JobStatus.SUCCESS:
        events.append(NewEvent(
            EventType.SUCCEEDED,
            f"training finished: {after.trained_tokens} trained tokens" + _losses(after),
            metrics=_numbers(trained_tokens=after.trained_tokens, epoch=after.epoch,
                             step=after.step, training_loss=after.training_loss,
                             validation_loss=after.validation_loss)))
    elif after.status is JobStatus.ERROR:
        detail = (after.error_message or "").strip()
        events.append(NewEvent(
            EventType.FAILED,
            f"job failed ({after.error_code}): {detail}"[:MAX_EVENT_MESSAGE], EventLevel.ERROR))
    elif after.status is JobStatus.CANCELLED:
        suffix = f" {detail}" if detail else ""
        events.append(NewEvent(EventType.CANCELLED, f"job cancelled{suffix}", EventLevel.WARNING))
    return events


def data_events(base: BaseModelSpec, seed: int, query_rows: int, training: SnapshotInfo,
                validation: SnapshotInfo | None, source: ValidationSource) -> list[NewEvent]:
    """What CREATE (and an estimate) tells about the data: snapshots, holdout, truncation."""
    tokens = training.prompt_tokens + training.completion_tokens
    events = [NewEvent(
        EventType.SNAPSHOT,
        f"training data: {training.rows} rows, {tokens} tokens"
        + (f", sha256 {training.sha256}" if training.sha256 else ""),
        metrics=_numbers(rows=training.rows, prompt_tokens=training.prompt_tokens,
                         completion_tokens=training.completion_tokens))]
    if source is ValidationSource.QUERY and validation is not None:
        events.append(NewEvent(
            EventType.SNAPSHOT,
            f"validation data: {validation.rows} rows from the validation query, "
            f"{validation.prompt_tokens + validation.completion_tokens} tokens"
            + (f", sha256 {validation.sha256}" if validation.sha256 else ""),
            metrics=_numbers(rows=validation.rows, prompt_tokens=validation.prompt_tokens,
                             completion_tokens=validation.completion_tokens)))
    elif source is ValidationSource.HOLDOUT and validation is not None:
        events.append(NewEvent(
            EventType.HOLDOUT,
            f"no validation query: held out {validation.rows} of the training query's "
            f"{query_rows} rows ({HOLDOUT_FRACTION:.0%}, picked with seed {seed}) for "
            f"validation; training on the other {training.rows}",
            metrics=_numbers(rows=validation.rows, query_rows=query_rows)))
    else:
        events.append(NewEvent(
            EventType.HOLDOUT,
            f"no validation query and only {query_rows} rows (fewer than "
            f"{MIN_ROWS_FOR_HOLDOUT}): none held out, so the job reports no validation loss",
            EventLevel.WARNING, metrics=_numbers(query_rows=query_rows)))
    truncated = training.truncated_rows + (validation.truncated_rows if validation else 0)
    if truncated:
        events.append(NewEvent(
            EventType.TRUNCATION,
            f"{truncated} row{'s' if truncated != 1 else ''} exceed{'s' if truncated == 1 else ''}"
            f" the base model's allocation of {base.prompt_tokens} prompt and "
            f"{base.completion_tokens} completion tokens and will be truncated",
            EventLevel.WARNING, metrics=_numbers(truncated_rows=truncated)))
    return events


def progress_event(report: JobProgress, message: str) -> NewEvent | None:
    """The trainer's milestones (its messages: data prepared, an epoch done, adapter exported)
    go into the log; its per-step reports only update the job."""
    message = message.strip()
    if not message:
        return None
    return NewEvent(EventType.PROGRESS, message[:MAX_EVENT_MESSAGE], metrics=_numbers(
        progress=report.progress, epoch=report.epoch, step=report.step,
        total_steps=report.total_steps, trained_tokens=report.trained_tokens,
        training_loss=report.training_loss, validation_loss=report.validation_loss))


def _losses(job: Job) -> str:
    parts = []
    if job.training_loss is not None:
        parts.append(f"training loss {job.training_loss:.4f}")
    if job.validation_loss is not None:
        parts.append(f"validation loss {job.validation_loss:.4f}")
    return ", " + ", ".join(parts) if parts else ""


def _numbers(**values) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None}
