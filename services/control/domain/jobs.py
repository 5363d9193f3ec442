"""A fine-tuning job and its state machine: PENDING -> IN_PROGRESS -> SUCCESS | ERROR | CANCELLED.

Pure: no I/O. Every status change goes through `Job._move`, so an illegal transition (anything
out of a terminal state, or backwards) raises instead of silently rewriting history.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from services.common.errors import FailedPrecondition

JOB_ID_PREFIX = "ft_"


class JobStatus(enum.Enum):
    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELLED})
ACTIVE = frozenset(JobStatus) - TERMINAL

# A job that succeeds without control ever seeing it run (a short job between two reconciler
# polls) still passes through IN_PROGRESS: `Job.succeed` starts it first.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.IN_PROGRESS, JobStatus.ERROR, JobStatus.CANCELLED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELLED}),
    JobStatus.SUCCESS: frozenset(),
    JobStatus.ERROR: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(FailedPrecondition):
    """A status change the state machine forbids (e.g. cancelling a finished job)."""


def can_move(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def new_job_id() -> str:
    return f"{JOB_ID_PREFIX}{uuid.uuid4()}"


# Where a job that evaluates its model stands once training is done (evaluation: 0.9 -> 1.0).
TRAINED_PROGRESS = 0.9


class ValidationSource(enum.Enum):
    QUERY = "QUERY"            # the validation query's rows
    HOLDOUT = "HOLDOUT"        # rows held out of the training query's result
    NONE = "NONE"              # no validation query, too few rows to hold any out


@dataclass(frozen=True)
class SnapshotInfo:
    """Lineage of one data file a job trains or validates on, with its token counts."""

    uri: str
    rows: int
    sha256: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated_rows: int = 0


class ErrorCode:
    """Machine-readable causes shown in FineTuningJob.error.code."""

    SUBMIT_FAILED = "SUBMIT_FAILED"        # the cluster never accepted the job
    TRAINING_FAILED = "TRAINING_FAILED"    # the Ray job failed
    NO_MANIFEST = "NO_MANIFEST"            # the Ray job succeeded but left no results
    LOST = "LOST"                          # the cluster no longer knows a running job
    REGISTRATION_FAILED = "REGISTRATION_FAILED"  # the output model could not be registered
    EVALUATION_FAILED = "EVALUATION_FAILED"      # a job-end evaluation failed
    EVALUATION_BELOW_THRESHOLD = "EVALUATION_BELOW_THRESHOLD"  # tuned did not beat base enough


@dataclass(frozen=True)
class TrainingResult:
    """What the trainer's manifest.json reports once a job has finished."""

    trained_tokens: int
    training_loss: float | None
    validation_loss: float | None
    epochs: int
    steps: int
    training_rows: int
    validation_rows: int
    truncated_rows: int | None    # None: the manifest does not say

    @classmethod
    def from_manifest(cls, manifest: dict) -> "TrainingResult":
        def number(key, kind, default=None):
            value = manifest.get(key, default)
            return None if value is None else kind(value)

        return cls(
            trained_tokens=number("trained_tokens", int, 0),
            training_loss=number("training_loss", float),
            validation_loss=number("validation_loss", float),
            epochs=number("epochs", int, 0),
            steps=number("steps", int, 0),
            training_rows=number("training_rows", int, 0),
            validation_rows=number("validation_rows", int, 0),
            truncated_rows=number("truncated_rows", int),
        )


@dataclass(frozen=True)
class JobProgress:
    """One progress report from the trainer on a job, as control applies it (the trainer's
    own, sent over ReportProgress, is services.trainer.reporting.Progress)."""

    progress: float
    epoch: int
    step: int
    total_steps: int
    trained_tokens: int
    training_loss: float | None = None
    validation_loss: float | None = None
    message: str = ""               # a milestone worth the event log ("epoch 1 of 3 done")


@dataclass
class Job:
    id: str
    account_id: str
    user_id: str
    model_name: str                 # fully qualified output model name
    base_model: str
    task_type: str
    training_query: str
    validation_query: str | None
    options: dict                   # the effective options, defaults filled in
    created_on: datetime
    request_id: str | None = None
    status: JobStatus = JobStatus.PENDING
    progress: float = 0.0
    error_code: str | None = None
    error_message: str | None = None
    started_on: datetime | None = None
    finished_on: datetime | None = None
    spec_uri: str | None = None
    output_uri: str | None = None
    trained_tokens: int = 0
    training_loss: float | None = None
    validation_loss: float | None = None
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    training_rows: int = 0
    validation_rows: int = 0
    truncated_rows: int = 0
    submit_attempts: int = 0
    updated_on: datetime | None = None
    owner_role_id: str | None = None   # the creator's role: DESCRIBE/CANCEL, owns the model
    # Lineage, written at CREATE: the snapshots (query text above, rows, content hash, tokens).
    training_data_uri: str | None = None
    training_data_sha256: str | None = None
    training_prompt_tokens: int = 0
    training_completion_tokens: int = 0
    training_truncated_rows: int = 0
    validation_data_uri: str | None = None
    validation_data_sha256: str | None = None
    validation_prompt_tokens: int = 0
    validation_completion_tokens: int = 0
    validation_truncated_rows: int = 0
    validation_source: str | None = None    # a ValidationSource value
    estimated_trained_tokens: int = 0       # training tokens per epoch x epochs, at CREATE
    # FineTuningOptions.evaluation (domain.evaluations.JobEvaluation.to_dict()), or None.
    evaluation: dict | None = None
    # The store's optimistic-lock counter; domain code never touches it.
    version: int = field(default=0, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def training_snapshot(self) -> SnapshotInfo | None:
        if not self.training_data_uri:
            return None
        return SnapshotInfo(self.training_data_uri, self.training_rows,
                            self.training_data_sha256 or "", self.training_prompt_tokens,
                            self.training_completion_tokens, self.training_truncated_rows)

    @property
    def validation_snapshot(self) -> SnapshotInfo | None:
        if not self.validation_data_uri:
            return None
        return SnapshotInfo(self.validation_data_uri, self.validation_rows,
                            self.validation_data_sha256 or "", self.validation_prompt_tokens,
                            self.validation_completion_tokens, self.validation_truncated_rows)

    def record_snapshots(self, training: SnapshotInfo, validation: SnapshotInfo | None,
                         source: ValidationSource, epochs: int) -> None:
        self.training_data_uri = training.uri
        self.training_data_sha256 = training.sha256
        self.training_rows = training.rows
        self.training_prompt_tokens = training.prompt_tokens
        self.training_completion_tokens = training.completion_tokens
        self.training_truncated_rows = training.truncated_rows
        if validation is not None:
            self.validation_data_uri = validation.uri
            self.validation_data_sha256 = validation.sha256
            self.validation_rows = validation.rows
            self.validation_prompt_tokens = validation.prompt_tokens
            self.validation_completion_tokens = validation.completion_tokens
            self.validation_truncated_rows = validation.truncated_rows
        self.validation_source = source.value
        self.truncated_rows = training.truncated_rows + (
            validation.truncated_rows if validation is not None else 0)
        self.estimated_trained_tokens = (training.prompt_tokens
                                         + training.completion_tokens) * epochs

    def _move(self, target: JobStatus, now: datetime) -> None:
        if not can_move(self.status, target):
            raise IllegalTransition(
                f"job {self.id} is {self.status.value} and cannot become {target.value}")
        self.status = target
        self.updated_on = now
        if target is JobStatus.IN_PROGRESS and self.started_on is None:
            self.started_on = now
        if target.terminal:
            self.finished_on = now

    def start(self, now: datetime) -> None:
        """The cluster runs the job (or the trainer reported for the first time)."""
        if self.status is JobStatus.PENDING:
            self._move(JobStatus.IN_PROGRESS, now)

    def report(self, p: JobProgress, now: datetime) -> None:
        if self.terminal:
            raise IllegalTransition(f"job {self.id} is {self.status.value}")
        self.start(now)
        self.progress = min(1.0, max(0.0, p.progress))
        self.epoch, self.step, self.total_steps = p.epoch, p.step, p.total_steps
        self.trained_tokens = max(0, p.trained_tokens)
        if p.training_loss is not None:
            self.training_loss = p.training_loss
        if p.validation_loss is not None:
            self.validation_loss = p.validation_loss
        self.updated_on = now

    def trained(self, result: TrainingResult, now: datetime,
                progress: float = TRAINED_PROGRESS) -> None:
        """Training is done but the job is not (its evaluations run): it stays IN_PROGRESS
        with the trainer's results recorded."""
        if self.terminal:
            raise IllegalTransition(f"job {self.id} is {self.status.value}")
        self.start(now)
        self._record_result(result)
        self.progress = min(1.0, max(TRAINED_PROGRESS, progress))
        self.updated_on = now

    def succeed(self, result: TrainingResult, now: datetime) -> None:
        self.start(now)
        self._move(JobStatus.SUCCESS, now)
        self.progress = 1.0
        self._record_result(result)

    def _record_result(self, result: TrainingResult) -> None:
        self.trained_tokens = result.trained_tokens
        self.training_loss = result.training_loss
        self.validation_loss = result.validation_loss
        self.epoch = result.epochs or self.epoch
        self.step = result.steps or self.step
        self.total_steps = result.steps or self.total_steps
        self.training_rows = result.training_rows or self.training_rows
        self.validation_rows = result.validation_rows or self.validation_rows
        if result.truncated_rows is not None:  # the trainer's own count is the final word
            self.truncated_rows = result.truncated_rows

    def fail(self, code: str, message: str, now: datetime) -> None:
        self._move(JobStatus.ERROR, now)
        self.error_code = code
        self.error_message = message

    def cancel(self, now: datetime) -> None:
        if self.terminal:
            raise IllegalTransition(
                f"job {self.id} is already {self.status.value} and cannot be cancelled")
        self._move(JobStatus.CANCELLED, now)
