"""What the pages show, from control's messages: rows and labels, no I/O (the routes fetch,
these shape, the templates lay out)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from finetune.control.v1 import evaluations_pb2, jobs_pb2, models_pb2, usage_pb2
from services.console.charts import Chart, daily_chart

STATES = ("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR", "CANCELLED")
TERMINAL = frozenset({jobs_pb2.SUCCESS, jobs_pb2.ERROR, jobs_pb2.CANCELLED})
PRECISION_PREFIX = "training precision"
RESULTS_FILE = "training_results.csv"


def when(ts: Timestamp) -> str:
    """A timestamp as UTC text; empty when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    return datetime.fromtimestamp(ts.seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_name(status: int) -> str:
    return jobs_pb2.JobStatus.Name(status)


def is_terminal(job: jobs_pb2.FineTuningJob) -> bool:
    return job.status in TERMINAL


def filter_jobs(jobs: Iterable[jobs_pb2.FineTuningJob],
                state: str) -> list[jobs_pb2.FineTuningJob]:
    """The jobs in `state` (one of STATES); every job for an empty or unknown state."""
    if state not in STATES:
        return list(jobs)
    wanted = jobs_pb2.JobStatus.Value(state)
    return [j for j in jobs if j.status == wanted]


@dataclass(frozen=True)
class JobRow:
    id: str
    model: str
    base_model: str
    status: str
    percent: int
    steps: str          # "3 / 12" once known
    created: str
    error: str


def job_row(job: jobs_pb2.FineTuningJob) -> JobRow:
    steps = f"{job.step} / {job.total_steps}" if job.total_steps else ""
    return JobRow(job.id, job.model, job.base_model, status_name(job.status),
                  round(100 * max(0.0, min(1.0, job.progress))), steps, when(job.created_on),
                  job.error.message)


def option_rows(job: jobs_pb2.FineTuningJob, precision: str) -> list[tuple[str, str]]:
    """The effective options (defaults filled in by control) and the training precision."""
    o = job.options
    rows = [("task type", jobs_pb2.TaskType.Name(o.task_type)),
            ("epochs", str(o.max_epochs)), ("learning rate", f"{o.learning_rate:g}"),
            ("batch size", str(o.batch_size)), ("LoRA rank", str(o.lora_rank)),
            ("LoRA alpha", str(o.lora_alpha)), ("LoRA dropout", f"{o.lora_dropout:g}"),
            ("target modules", ", ".join(o.target_modules)), ("seed", str(o.seed)),
            ("workers", str(o.num_workers) if o.num_workers else "service default")]
    if o.from_model:
        rows.append(("continues from", o.from_model))
    if o.early_stopping_patience:
        rows.append(("early stopping patience", str(o.early_stopping_patience)))
    rows.append(("precision", precision or "not reported yet"))
    return rows


def precision_note(events: Iterable[jobs_pb2.JobEvent]) -> str:
    """The trainer's precision decision ('training precision fp32 (measured ...)'), from the
    event that reports it; its timing details after ';' are left to the event log."""
    for event in events:
        if event.message.startswith(PRECISION_PREFIX):
            return event.message.split(";")[0].strip()
    return ""


@dataclass(frozen=True)
class Lineage:
    label: str
    query: str
    rows: int
    sha256: str
    uri: str
    truncated_rows: int


def lineage(job: jobs_pb2.FineTuningJob) -> list[Lineage]:
    out = [Lineage("training", job.training_data, job.training_snapshot.rows,
                   job.training_snapshot.sha256, job.training_snapshot.uri,
                   job.training_snapshot.truncated_rows)]
    if job.HasField("validation_snapshot"):
        source = jobs_pb2.ValidationSource.Name(job.validation_source)
        query = job.validation_data or f"({source.lower().replace('_', ' ')} of the training rows)"
        out.append(Lineage("validation", query, job.validation_snapshot.rows,
                           job.validation_snapshot.sha256, job.validation_snapshot.uri,
                           job.validation_snapshot.truncated_rows))
    return out


def event_level(level: int) -> str:
    name = jobs_pb2.EventLevel.Name(level)
    return name.removeprefix("EVENT_").lower()


def evaluation_status(evaluation: evaluations_pb2.Evaluation) -> str:
    name = evaluations_pb2.EvaluationStatus.Name(evaluation.status)
    return name.removeprefix("EVALUATION_")


@dataclass(frozen=True)
class MetricRow:
    name: str
    base: float | None
    tuned: float | None
    primary: bool

    @property
    def delta(self) -> float | None:
        if self.base is None or self.tuned is None:
            return None
        return self.tuned - self.base


def evaluation_comparison(base: evaluations_pb2.Evaluation,
                          tuned: evaluations_pb2.Evaluation) -> list[MetricRow]:
    """Each summary metric of the job's two evaluations side by side, the primary one first."""
    primary = tuned.primary_metric or base.primary_metric
    names = sorted(set(base.metrics) | set(tuned.metrics), key=lambda n: (n != primary, n))
    return [MetricRow(n, base.metrics[n] if n in base.metrics else None,
                      tuned.metrics[n] if n in tuned.metrics else None, n == primary)
            for n in names]


def has_evaluation(job: jobs_pb2.FineTuningJob) -> bool:
    return job.HasField("base_evaluation") or job.HasField("tuned_evaluation")


def estimate_rows(estimate: jobs_pb2.FineTuningJobEstimate) -> list[tuple[str, str]]:
    t = estimate.training
    rows = [("training rows", f"{t.rows:,}"), ("row limit", f"{estimate.max_rows:,}"),
            ("epochs", str(estimate.epochs)),
            ("tokens per epoch", f"{estimate.tokens_per_epoch:,}"),
            ("trained tokens", f"{estimate.trained_tokens:,}"),
            ("credits", f"{estimate.credits:.6g}"),
            ("credits per million tokens", f"{estimate.credits_per_million_tokens:g}"),
            ("truncated training rows", f"{t.truncated_rows:,}")]
    if estimate.HasField("validation"):
        rows += [("validation rows", f"{estimate.validation.rows:,}"),
                 ("truncated validation rows", f"{estimate.validation.truncated_rows:,}")]
    return rows


@dataclass(frozen=True)
class ModelUsage:
    requests: int = 0
    total_tokens: int = 0
    credits: float = 0.0


def usage_by_model(groups: Iterable[usage_pb2.InferenceUsageGroup]) -> dict[str, ModelUsage]:
    out: dict[str, ModelUsage] = {}
    for g in groups:
        old = out.get(g.model, ModelUsage())
        out[g.model] = ModelUsage(old.requests + g.requests, old.total_tokens + g.total_tokens,
                                  old.credits + g.credits)
    return out


@dataclass(frozen=True)
class ModelRow:
    name: str
    base_model: str
    version: int
    job_id: str
    created: str
    trained_tokens: int
    training_loss: float
    validation_loss: float
    evaluations: list[evaluations_pb2.Evaluation]
    usage: ModelUsage
    downloads: list[str]     # artifacts the caller may download (control said so)
    downloads_refused: str   # control's message when it refused


def model_rows(models: Sequence[models_pb2.Model], usage: dict[str, ModelUsage],
               downloads: dict[str, str]) -> list[ModelRow]:
    """`downloads`: model name -> "" where control streamed the caller its results file, or
    control's refusal."""
    return [ModelRow(m.name, m.base_model, m.version, m.job_id, when(m.created_on),
                     m.trained_tokens, m.training_loss, m.validation_loss, list(m.evaluations),
                     usage.get(m.name, ModelUsage()),
                     list(m.artifacts) if downloads.get(m.name) == "" else [],
                     downloads.get(m.name, ""))
            for m in models]


def usage_charts(groups: Iterable[usage_pb2.InferenceUsageGroup],
                 fine_tuning: Iterable[usage_pb2.FineTuningUsage]) -> dict[str, Chart]:
    """Tokens and credits by day, one series per model: inference (COMPLETE) by the model
    called, fine-tuning by the model trained, on the day the job ended."""
    groups, fine_tuning = list(groups), list(fine_tuning)
    trained = [(_day(u.end_time), f"{u.model or u.job_id} (fine-tuning)", u) for u in fine_tuning
               if u.end_time.seconds]
    return {
        "tokens": daily_chart([(g.day, g.model, float(g.total_tokens)) for g in groups] +
                              [(d, name, float(u.trained_tokens)) for d, name, u in trained]),
        "credits": daily_chart([(g.day, g.model, g.credits) for g in groups] +
                               [(d, name, u.credits) for d, name, u in trained]),
    }


def _day(ts: Timestamp) -> str:
    return datetime.fromtimestamp(ts.seconds, timezone.utc).date().isoformat()
