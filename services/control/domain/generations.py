"""A batch generation (ML.GENERATE_TEXT): a model answers every row of a frozen query, and the
answers become a new table. Its states are an evaluation's (PENDING -> RUNNING -> SUCCEEDED |
FAILED | CANCELLED, RUNNING -> PENDING when control restarts), but a restarted run resumes:
the rows already answered are kept, and so are their counts.

Pure: no I/O. Also which columns the query returns and which it adds.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Sequence

from services.common.errors import InvalidArgument
from services.control.domain.evaluations import (
    EvaluationStatus,
    EvaluationTask,
    Generation,
    IllegalEvaluationTransition,
    RequestedGeneration,
    move,
    resolve_generation,
)

GENERATION_ID_PREFIX = "gen_"
DEFAULT_MAX_TOKENS = 256
PROMPT_COLUMN = "prompt"
# What the generation adds to the query's columns, in this order.
OUTPUT_COLUMNS = ("generated_text", "finish_reason", "prompt_tokens", "completion_tokens",
                  "error")

GenerationStatus = EvaluationStatus   # the same states and transitions


def new_generation_id() -> str:
    return f"{GENERATION_ID_PREFIX}{uuid.uuid4()}"


def resolve_options(requested: RequestedGeneration) -> Generation:
    """An evaluation's checks and defaults, with room for a paragraph by default."""
    options = resolve_generation(requested, EvaluationTask.TEXT_GENERATION)
    return options if requested.max_tokens else replace(options, max_tokens=DEFAULT_MAX_TOKENS)


def prompt_index(columns: Sequence[str]) -> int:
    """The prompt column's position; the query must not return a column the generation adds."""
    lowered = [c.lower() for c in columns]
    if PROMPT_COLUMN not in lowered:
        raise InvalidArgument(f"the query must return a {PROMPT_COLUMN} column "
                              f"(it returns {', '.join(columns) or 'no columns'})")
    clashes = [c for c in columns if c.lower() in OUTPUT_COLUMNS]
    if clashes:
        raise InvalidArgument(f"the query returns {', '.join(clashes)}, which the generation "
                              f"adds (rename with AS): {', '.join(OUTPUT_COLUMNS)}")
    if len(set(lowered)) != len(lowered):
        raise InvalidArgument("the query returns two columns with the same name")
    return lowered.index(PROMPT_COLUMN)


@dataclass(frozen=True)
class RowAnswer:
    """One row's output, as saved while the generation runs."""

    row: int
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None

    def to_dict(self) -> dict:
        return {"row": self.row, "text": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> "RowAnswer":
        return cls(int(d["row"]), d.get("text"), d.get("finish_reason"),
                   int(d.get("prompt_tokens") or 0), int(d.get("completion_tokens") or 0),
                   d.get("error"))


@dataclass
class TextGeneration:
    id: str
    account_id: str
    user_id: str                     # who started it: inference bills and authorizes this user
    model: str                       # canonical fine-tuned name, or a base model name
    base_model: str
    query: str
    into: str                        # canonical db.schema.table
    options: Generation
    created_on: datetime
    model_version: int = 0
    adapter_id: int = 0
    status: EvaluationStatus = EvaluationStatus.PENDING
    progress: float = 0.0
    error: str | None = None
    rows: int = 0
    rows_done: int = 0
    rows_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started_on: datetime | None = None
    finished_on: datetime | None = None
    updated_on: datetime | None = None
    request_id: str | None = None
    data_uri: str | None = None      # the query's rows, frozen at GenerateText
    attempts: int = 0
    version: int = field(default=0, compare=False)

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def _move(self, target: EvaluationStatus, now: datetime) -> None:
        move(self, target, now, "generation")

    def start(self, now: datetime) -> None:
        """A run begins; it resumes where the last one stopped (counts are kept)."""
        self._move(EvaluationStatus.RUNNING, now)
        self.attempts += 1

    def requeue(self, now: datetime) -> None:
        self._move(EvaluationStatus.PENDING, now)

    def report(self, rows_done: int, rows_failed: int, prompt_tokens: int,
               completion_tokens: int, now: datetime) -> None:
        if self.status is not EvaluationStatus.RUNNING:
            raise IllegalEvaluationTransition(f"generation {self.id} is {self.status.value}")
        self.rows_done = max(0, min(rows_done, self.rows))
        self.rows_failed = max(0, min(rows_failed, self.rows_done))
        self.progress = self.rows_done / self.rows if self.rows else 0.0
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        self.updated_on = now

    def succeed(self, now: datetime) -> None:
        self._move(EvaluationStatus.SUCCEEDED, now)
        self.progress = 1.0

    def fail(self, message: str, now: datetime) -> None:
        self._move(EvaluationStatus.FAILED, now)
        self.error = message

    def cancel(self, now: datetime) -> None:
        if self.terminal:
            raise IllegalEvaluationTransition(
                f"generation {self.id} is already {self.status.value} and cannot be cancelled")
        self._move(EvaluationStatus.CANCELLED, now)
