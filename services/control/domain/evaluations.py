"""A model evaluation (ML.EVALUATE) and its state machine:
PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED (terminal states are final).

Pure: no I/O. Also the rules every evaluation follows: which columns its query returns, the
generation defaults and limits, how a generated text becomes a prediction and how labels are
compared.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Sequence

from services.common.choices import choices_fit
from services.common.errors import FailedPrecondition, InvalidArgument

EVALUATION_ID_PREFIX = "ev_"

DEFAULT_CONCURRENCY = 8
MAX_CONCURRENCY = 64
MAX_TOKENS_LIMIT = 4096
MAX_STOP_SEQUENCES = 8
MAX_TEMPERATURE = 2.0


class EvaluationTask(enum.Enum):
    CLASSIFICATION = "CLASSIFICATION"
    TEXT_GENERATION = "TEXT_GENERATION"
    QUESTION_ANSWERING = "QUESTION_ANSWERING"


# The metric min_improvement compares and the CLI sorts by.
PRIMARY_METRIC = {
    EvaluationTask.CLASSIFICATION: "macro_f1",
    EvaluationTask.TEXT_GENERATION: "rougeL_f1",
    EvaluationTask.QUESTION_ANSWERING: "exact_match",
}

# Used only where the references' lengths are unknown (their tokenizer cannot be loaded).
DEFAULT_MAX_TOKENS = {
    EvaluationTask.CLASSIFICATION: 16,
    EvaluationTask.TEXT_GENERATION: 128,
    EvaluationTask.QUESTION_ANSWERING: 16,
}
# Otherwise max_tokens defaults to the longest reference (with end of turn) plus this margin
# (a label tokenizes a little differently inside an answer): a longer answer cannot be right,
# and a base model that never stops costs no more than the longest label. Generation gets at
# least its default, room for a sentence.
REFERENCE_MARGIN_TOKENS = 4


class EvaluationStatus(enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({EvaluationStatus.SUCCEEDED, EvaluationStatus.FAILED,
                      EvaluationStatus.CANCELLED})
ACTIVE = frozenset(EvaluationStatus) - TERMINAL

# RUNNING -> PENDING: a restarted control runs an interrupted evaluation again from scratch.
TRANSITIONS: dict[EvaluationStatus, frozenset[EvaluationStatus]] = {
    EvaluationStatus.PENDING: frozenset({EvaluationStatus.RUNNING, EvaluationStatus.FAILED,
                                         EvaluationStatus.CANCELLED}),
    EvaluationStatus.RUNNING: frozenset({EvaluationStatus.PENDING, EvaluationStatus.SUCCEEDED,
                                         EvaluationStatus.FAILED,
                                         EvaluationStatus.CANCELLED}),
    EvaluationStatus.SUCCEEDED: frozenset(),
    EvaluationStatus.FAILED: frozenset(),
    EvaluationStatus.CANCELLED: frozenset(),
}


class IllegalEvaluationTransition(FailedPrecondition):
    """A status change the state machine forbids (e.g. cancelling a finished evaluation)."""


def move(item, target: EvaluationStatus, now: datetime, what: str) -> None:
    """An evaluation's or a generation's status change, with its times; the state machine
    refuses the others."""
    if target not in TRANSITIONS[item.status]:
        raise IllegalEvaluationTransition(
            f"{what} {item.id} is {item.status.value} and cannot become {target.value}")
    item.status = target
    item.updated_on = now
    if target is EvaluationStatus.RUNNING and item.started_on is None:
        item.started_on = now
    if target.terminal:
        item.finished_on = now


def new_evaluation_id() -> str:
    return f"{EVALUATION_ID_PREFIX}{uuid.uuid4()}"


class EvaluationRole:
    """What an evaluation run by a fine-tuning job measured."""

    BASE = "base"
    TUNED = "tuned"


# -- generation options ----------------------------------------------------------------------

@dataclass(frozen=True)
class RequestedGeneration:
    """What the caller asked for; zero/empty means the default."""

    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    concurrency: int = 0
    free_form: bool = False


@dataclass(frozen=True)
class Generation:
    """The effective generation settings: greedy by default, max_tokens by task."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int
    concurrency: int
    free_form: bool = False   # classification: answer freely, not one of the labels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Generation":
        return cls(**{**d, "stop": tuple(d.get("stop", ()))})


def resolve_task(value: EvaluationTask | None) -> EvaluationTask:
    """EVALUATION_TASK_UNSPECIFIED is CLASSIFICATION."""
    return value or EvaluationTask.CLASSIFICATION


def resolve_generation(requested: RequestedGeneration, task: EvaluationTask) -> Generation:
    """Defaults filled in and ranges checked; InvalidArgument lists every problem."""
    problems: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name in ("temperature", "top_p"):
        value = getattr(requested, name)
        check(math.isfinite(value), f"{name} must be a finite number")
    if not problems:
        check(0 <= requested.temperature <= MAX_TEMPERATURE,
              f"temperature must be between 0 and {MAX_TEMPERATURE} "
              f"(got {requested.temperature})")
        check(0 <= requested.top_p <= 1, f"top_p must be in (0, 1] (got {requested.top_p}; "
                                         "0 means 1)")
    check(0 <= requested.max_tokens <= MAX_TOKENS_LIMIT,
          f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT} (got {requested.max_tokens}; "
          "0 means the task's default)")
    check(0 <= requested.concurrency <= MAX_CONCURRENCY,
          f"concurrency must be between 1 and {MAX_CONCURRENCY} (got {requested.concurrency}; "
          "0 means the default)")
    check(requested.seed >= 0, f"seed must not be negative (got {requested.seed})")
    check(len(requested.stop) <= MAX_STOP_SEQUENCES,
          f"at most {MAX_STOP_SEQUENCES} stop sequences")
    check(all(requested.stop), "stop sequences must not be empty")
    if problems:
        raise InvalidArgument("invalid generation options: " + "; ".join(problems))
    return Generation(
        max_tokens=requested.max_tokens or DEFAULT_MAX_TOKENS[task],
        temperature=requested.temperature,
        top_p=requested.top_p or 1.0,
        stop=tuple(requested.stop),
        seed=requested.seed,
        concurrency=requested.concurrency or DEFAULT_CONCURRENCY,
        free_form=requested.free_form,
    )


def answer_choices(task: EvaluationTask, generation: Generation,
                   references: Sequence[str]) -> tuple[str, ...]:
    """The answers a classification may give: its references' labels, each in its first
    spelling (labels compare case-insensitively, see metrics.label_key). A classifier picks
    one of its classes; a free answer that names no label cannot be right, and a base model's
    chatter says nothing about what it knows. Empty (free text) for other tasks, with
    free_form, or where the labels do not fit a response_format (too many or too long)."""
    if task is not EvaluationTask.CLASSIFICATION or generation.free_form:
        return ()
    labels = tuple(label_spellings(references).values())
    if not labels or not choices_fit(labels):   # inference would refuse them
        return ()
    return labels


def fit_max_tokens(generation: Generation, requested: RequestedGeneration,
                   task: EvaluationTask, longest_reference_tokens: int | None) -> Generation:
    """`generation` with max_tokens sized to the references, unless the caller chose it."""
    if requested.max_tokens or longest_reference_tokens is None:
        return generation
    fitted = longest_reference_tokens + REFERENCE_MARGIN_TOKENS
    if task is EvaluationTask.TEXT_GENERATION:
        fitted = max(fitted, DEFAULT_MAX_TOKENS[task])
    return replace(generation, max_tokens=max(1, min(MAX_TOKENS_LIMIT, fitted)))


# -- the query's columns ---------------------------------------------------------------------

REFERENCE_COLUMNS = ("label", "completion")


@dataclass(frozen=True)
class Columns:
    prompt: int
    reference: int
    reference_name: str


def evaluation_columns(columns: Sequence[str], what: str = "evaluation query") -> Columns:
    """Where `prompt` and the reference (`label`, else `completion`) are in the result; names
    match case-insensitively, other columns are ignored."""
    by_name: dict[str, int] = {}
    for i, name in enumerate(columns):
        by_name.setdefault(name.lower(), i)
    missing = []
    if "prompt" not in by_name:
        missing.append("prompt")
    reference = next((c for c in REFERENCE_COLUMNS if c in by_name), None)
    if reference is None:
        missing.append("label (or completion)")
    if missing or reference is None:
        raise InvalidArgument(
            f"{what} must return column{'s' if len(missing) > 1 else ''} "
            f"{' and '.join(missing)} (it returns: {', '.join(columns) or 'no columns'})")
    return Columns(by_name["prompt"], by_name[reference], reference)


def evaluation_record(columns: Columns, row: Sequence, row_number: int,
                      what: str = "evaluation query") -> dict:
    """One snapshot line: {"prompt", "reference"}; InvalidArgument names a NULL's row."""
    out = {}
    for key, position, name in (("prompt", columns.prompt, "prompt"),
                                ("reference", columns.reference, columns.reference_name)):
        value = row[position]
        if value is None:
            raise InvalidArgument(f"{what}: row {row_number} has a NULL {name}")
        out[key] = value if isinstance(value, str) else str(value)
    return out


# -- predictions and labels ------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[^\w\s]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def prediction_text(generated: str, task: EvaluationTask) -> str:
    """What a generated text answers: its first line for classification and QA (models often
    go on after the answer), all of it for generation; surrounding whitespace removed."""
    text = generated.strip()
    if task is not EvaluationTask.TEXT_GENERATION:
        text = text.split("\n", 1)[0].strip()
    return text


def label_key(text: str) -> str:
    """Classification labels compare case-insensitively, whitespace collapsed."""
    return _WHITESPACE.sub(" ", text.strip()).casefold()


def label_spellings(references: Sequence[str]) -> dict[str, str]:
    """Each label (by label_key) and its first spelling among the references, in order."""
    shown: dict[str, str] = {}
    for reference in references:
        shown.setdefault(label_key(reference), reference.strip())
    return shown


def answer_key(text: str) -> str:
    """QA answers compare as SQuAD does: lower case, punctuation and articles removed,
    whitespace collapsed."""
    text = _PUNCTUATION.sub(" ", text.casefold())
    return _WHITESPACE.sub(" ", _ARTICLES.sub(" ", text)).strip()


# -- the evaluation --------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelMetric:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Evaluation:
    id: str
    account_id: str
    user_id: str                     # who started it: inference bills and authorizes this user
    model: str                       # canonical fine-tuned name, or a base model name
    base_model: str
    task: EvaluationTask
    query: str
    generation: Generation
    created_on: datetime
    model_version: int = 0           # 0 for a base model
    adapter_id: int = 0              # the model row evaluated (0 for a base model)
    status: EvaluationStatus = EvaluationStatus.PENDING
    progress: float = 0.0
    error: str | None = None
    rows: int = 0
    rows_done: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    labels: list[LabelMetric] = field(default_factory=list)
    started_on: datetime | None = None
    finished_on: datetime | None = None
    updated_on: datetime | None = None
    job_id: str | None = None
    role: str | None = None          # EvaluationRole in a job
    prompt_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = None
    data_uri: str | None = None      # the query's rows, frozen at EvaluateModel
    attempts: int = 0                # runs started (a control restart starts another)
    version: int = field(default=0, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.task]

    @property
    def primary_value(self) -> float | None:
        return self.metrics.get(self.primary_metric)

    def _move(self, target: EvaluationStatus, now: datetime) -> None:
        move(self, target, now, "evaluation")

    def start(self, now: datetime) -> None:
        """A run begins, from scratch: what an interrupted run counted is dropped."""
        self._move(EvaluationStatus.RUNNING, now)
        self.attempts += 1
        self.rows_done = 0
        self.progress = 0.0
        self.prompt_tokens = self.completion_tokens = 0

    def requeue(self, now: datetime) -> None:
        """Control stopped during a run: the next runner starts it again."""
        self._move(EvaluationStatus.PENDING, now)

    def report(self, rows_done: int, prompt_tokens: int, completion_tokens: int,
               now: datetime) -> None:
        if self.status is not EvaluationStatus.RUNNING:
            raise IllegalEvaluationTransition(f"evaluation {self.id} is {self.status.value}")
        self.rows_done = max(0, min(rows_done, self.rows))
        self.progress = self.rows_done / self.rows if self.rows else 0.0
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.updated_on = now

    def succeed(self, metrics: dict[str, float], labels: list[LabelMetric],
                now: datetime) -> None:
        self._move(EvaluationStatus.SUCCEEDED, now)
        self.metrics = dict(metrics)
        self.labels = sorted(labels, key=lambda m: m.label)
        self.rows_done = self.rows
        self.progress = 1.0

    def fail(self, message: str, now: datetime) -> None:
        self._move(EvaluationStatus.FAILED, now)
        self.error = message

    def cancel(self, now: datetime, reason: str = "") -> None:
        if self.terminal:
            raise IllegalEvaluationTransition(
                f"evaluation {self.id} is already {self.status.value} and cannot be cancelled")
        self._move(EvaluationStatus.CANCELLED, now)
        if reason:
            self.error = reason


# -- job-end evaluation ----------------------------------------------------------------------

@dataclass(frozen=True)
class JobEvaluation:
    """FineTuningOptions.evaluation as a job keeps it (the query already snapshotted)."""

    query: str
    task: EvaluationTask
    generation: Generation
    min_improvement: float | None
    data_uri: str = ""
    rows: int = 0

    def to_dict(self) -> dict:
        return {"query": self.query, "task": self.task.value,
                "generation": self.generation.to_dict(),
                "min_improvement": self.min_improvement, "data_uri": self.data_uri,
                "rows": self.rows}

    @classmethod
    def from_dict(cls, d: dict) -> "JobEvaluation":
        return cls(query=d["query"], task=EvaluationTask(d["task"]),
                   generation=Generation.from_dict(d["generation"]),
                   min_improvement=d.get("min_improvement"), data_uri=d.get("data_uri", ""),
                   rows=int(d.get("rows", 0)))


def check_min_improvement(value: float) -> float:
    if not math.isfinite(value) or not -1 <= value <= 1:
        raise InvalidArgument(f"invalid options: evaluation.min_improvement must be between -1 "
                              f"and 1 (absolute, in the primary metric's 0-1 units; got {value})")
    return value


@dataclass(frozen=True)
class Verdict:
    """What a job's two evaluations decide: register the model or not, and why."""

    passed: bool
    message: str
    base: float
    tuned: float


def judge(base: Evaluation, tuned: Evaluation, min_improvement: float | None) -> Verdict:
    metric = tuned.primary_metric
    base_value = base.primary_value or 0.0
    tuned_value = tuned.primary_value or 0.0
    improvement = tuned_value - base_value
    numbers = (f"{metric}: tuned {tuned_value:.4f}, base {base_value:.4f}, "
               f"improvement {improvement:+.4f}")
    if min_improvement is not None and improvement < min_improvement - 1e-12:
        return Verdict(False, f"the tuned model does not beat its base model by the required "
                              f"{min_improvement:.4f} ({numbers}); the model was not registered",
                       base_value, tuned_value)
    return Verdict(True, numbers, base_value, tuned_value)
