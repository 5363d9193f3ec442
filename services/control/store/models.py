"""Registered models. Deleting one only marks it deleted: its id (the adapter id) and its
version history stay, so a retrained name gets a new id and a higher version."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from services.control.domain.models import ModelState, RegisteredModel
from services.control.store.tables import ModelRow


def _to_model(row: ModelRow) -> RegisteredModel:
    return RegisteredModel(
        id=row.id, account_id=row.account_id, name=row.name, version=row.version,
        base_model=row.base_model, job_id=row.job_id or "", adapter_uri=row.adapter_uri,
        created_on=row.created_on, trained_tokens=row.trained_tokens,
        training_loss=row.training_loss, validation_loss=row.validation_loss,
        state=row.state or ModelState.READY, imported_from=row.imported_from or "",
        file_sha256=dict(row.file_sha256 or {}), request_id=row.request_id or "")


class ModelRepository:
    def __init__(self, session: Session):
        self._s = session

    def add(self, *, account_id: str, name: str, base_model: str, job_id: str,
            adapter_uri: str, created_on: datetime, trained_tokens: int,
            training_loss: float | None, validation_loss: float | None,
            state: str = ModelState.READY, imported_from: str = "",
            file_sha256: dict[str, str] | None = None,
            request_id: str = "") -> RegisteredModel:
        """A new version of `name`; job_id "" for an imported model (with its lineage)."""
        previous = self._s.scalar(select(func.max(ModelRow.version)).where(
            ModelRow.account_id == account_id, ModelRow.name == name)) or 0
        row = ModelRow(account_id=account_id, name=name, version=previous + 1,
                       base_model=base_model, job_id=job_id or None, adapter_uri=adapter_uri,
                       created_on=created_on, trained_tokens=trained_tokens,
                       training_loss=training_loss, validation_loss=validation_loss,
                       state=state, imported_from=imported_from or None,
                       file_sha256=file_sha256 or None, request_id=request_id or None)
        self._s.add(row)
        self._s.flush()
        return _to_model(row)

    def _live(self, account_id: str, name: str) -> ModelRow | None:
        return self._s.scalar(select(ModelRow).where(
            ModelRow.account_id == account_id, ModelRow.name == name,
            ModelRow.deleted_on.is_(None)))

    def get(self, account_id: str, name: str) -> RegisteredModel | None:
        row = self._live(account_id, name)
        return None if row is None else _to_model(row)

    def by_request_id(self, account_id: str, request_id: str) -> RegisteredModel | None:
        """The live model an import with this request id registered."""
        row = self._s.scalar(select(ModelRow).where(ModelRow.account_id == account_id,
                                                    ModelRow.request_id == request_id,
                                                    ModelRow.deleted_on.is_(None)))
        return None if row is None else _to_model(row)

    def by_job(self, job_id: str) -> RegisteredModel | None:
        row = self._s.scalar(select(ModelRow).where(ModelRow.job_id == job_id))
        return None if row is None else _to_model(row)

    def set_state(self, model_id: int, state: str) -> None:
        row = self._s.get(ModelRow, model_id)
        if row is not None:
            row.state = state
            self._s.flush()

    def purge(self, model_id: int) -> None:
        """Remove a candidate that was never registered (its id is still never reused: the
        table is AUTOINCREMENT on SQLite, a sequence on PostgreSQL)."""
        self._s.execute(delete(ModelRow).where(ModelRow.id == model_id))
        self._s.flush()

    def page(self, account_id: str, limit: int, after: str | None = None) -> list[RegisteredModel]:
        query = select(ModelRow).where(ModelRow.account_id == account_id,
                                       ModelRow.deleted_on.is_(None),
                                       ModelRow.state == ModelState.READY)
        if after:
            query = query.where(ModelRow.name > after)
        return [_to_model(r) for r in self._s.scalars(query.order_by(ModelRow.name).limit(limit))]

    def delete(self, account_id: str, name: str, now: datetime) -> RegisteredModel | None:
        row = self._live(account_id, name)
        if row is None:
            return None
        row.deleted_on = now
        self._s.flush()
        return _to_model(row)
