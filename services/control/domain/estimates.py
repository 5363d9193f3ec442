"""EstimateFineTuningJob's answer: what a job would train on and what it would cost (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from services.control.domain.jobs import SnapshotInfo, ValidationSource
from services.control.domain.options import TrainingOptions
from services.control.domain.prices import TOKENS_PER_UNIT


@dataclass(frozen=True)
class JobEstimate:
    base_model: str
    options: TrainingOptions
    max_rows: int
    training: SnapshotInfo
    validation: SnapshotInfo | None
    validation_source: ValidationSource
    credits_per_million_tokens: float
    notes: tuple[str, ...] = ()

    @property
    def epochs(self) -> int:
        return self.options.max_epochs

    @property
    def tokens_per_epoch(self) -> int:
        return self.training.prompt_tokens + self.training.completion_tokens

    @property
    def trained_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs

    @property
    def credits(self) -> float:
        return self.credits_per_million_tokens * self.trained_tokens / TOKENS_PER_UNIT
