"""A registered (fine-tuned) model: the output of a successful job, or an adapter imported from
elsewhere, addressable by name."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    job_id: str                # "" for an imported model
    adapter_uri: str           # the job's output folder, or the import's folder
    created_on: datetime
    trained_tokens: int = 0
    training_loss: float | None = None
    validation_loss: float | None = None
    state: str = ModelState.READY
    imported_from: str = ""    # an imported model's source: "upload" or the URI it was read from
    file_sha256: dict[str, str] = field(default_factory=dict)   # an import's files, as imported
    request_id: str = ""       # the import's, for idempotent retries

    @property
    def ready(self) -> bool:
        return self.state == ModelState.READY

    @property
    def imported(self) -> bool:
        return bool(self.imported_from)
