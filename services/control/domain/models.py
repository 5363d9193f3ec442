"""A registered (fine-tuned) model: the output of a successful job, or an adapter imported from
elsewhere, addressable by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.control.domain.names import shared_model_name


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
    # Set on the view another account gets of a model shared with it (`shared_view`): the
    # owner account. That view carries no lineage, training figures or files.
    shared_from: str = ""

    @property
    def ready(self) -> bool:
        return self.state == ModelState.READY

    @property
    def imported(self) -> bool:
        return bool(self.imported_from)

    def shared_view(self, viewer_account_id: str) -> "RegisteredModel":
        """What an account this model is shared with may see of it: its four-part name, base
        model, version and date. The view belongs to the viewer's account, so nothing the owner
        keeps under the name (evaluations, say) is found through it."""
        return RegisteredModel(
            id=self.id, account_id=viewer_account_id,
            name=shared_model_name(self.account_id, self.name),
            version=self.version, base_model=self.base_model, job_id="", adapter_uri="",
            created_on=self.created_on, state=self.state, shared_from=self.account_id)
