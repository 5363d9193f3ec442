"""A registered (fine-tuned) model: the output of a successful job, addressable by name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class ModelState:
    READY = "READY"            # registered and usable
    EVALUATING = "EVALUATING"  # a job's candidate: only the job's evaluations may use it


@dataclass(frozen=True)
class RegisteredModel:
    id: int                    # the adapter id: unique per adapter version, never reused
    account_id: str
    name: str                  # fully qualified DATABASE.SCHEMA.NAME
    version: int               # 1 + the number of earlier models ever registered under the name
    base_model: str
    job_id: str
    adapter_uri: str           # the job's output folder
    created_on: datetime
    trained_tokens: int = 0
    training_loss: float | None = None
    validation_loss: float | None = None
    state: str = ModelState.READY

    @property
    def ready(self) -> bool:
        return self.state == ModelState.READY
