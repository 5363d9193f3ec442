"""Batch generations in the metadata DB, as domain `TextGeneration`s."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.control.domain.evaluations import ACTIVE, EvaluationStatus, Generation
from services.control.domain.generations import TextGeneration
from services.control.store.tables import GenerationRow

_PLAIN = ("account_id", "user_id", "request_id", "model", "base_model", "model_version",
          "adapter_id", "query", "into", "progress", "error", "rows", "rows_done",
          "rows_failed", "prompt_tokens", "completion_tokens", "created_on", "started_on",
          "finished_on", "updated_on", "data_uri", "attempts")


def _to_generation(row: GenerationRow) -> TextGeneration:
    return TextGeneration(id=row.id, options=Generation.from_dict(row.options),
                          status=EvaluationStatus(row.status), version=row.version,
                          **{name: getattr(row, name) for name in _PLAIN})


def _copy_onto(generation: TextGeneration, row: GenerationRow) -> None:
    for name in _PLAIN:
        setattr(row, name, getattr(generation, name))
    row.options = generation.options.to_dict()
    row.status = generation.status.value


class GenerationRepository:
    def __init__(self, session: Session):
        self._s = session

    def add(self, generation: TextGeneration) -> TextGeneration:
        row = GenerationRow(id=generation.id)
        _copy_onto(generation, row)
        self._s.add(row)
        self._s.flush()
        return _to_generation(row)

    def get(self, generation_id: str, account_id: str | None = None) -> TextGeneration | None:
        row = self._s.get(GenerationRow, generation_id)
        if row is None or (account_id is not None and row.account_id != account_id):
            return None
        return _to_generation(row)

    def save(self, generation: TextGeneration) -> TextGeneration:
        """Write back a generation read in this transaction; StaleDataError if it changed."""
        row = self._s.get(GenerationRow, generation.id)
        if row is None:
            raise LookupError(generation.id)
        if row.version != generation.version:
            raise StaleDataError(f"generation {generation.id} changed since it was read")
        _copy_onto(generation, row)
        self._s.flush()
        return _to_generation(row)

    def by_request_id(self, account_id: str, request_id: str) -> TextGeneration | None:
        row = self._s.scalar(select(GenerationRow).where(
            GenerationRow.account_id == account_id, GenerationRow.request_id == request_id))
        return None if row is None else _to_generation(row)

    def page(self, account_id: str, limit: int, user_id: str | None = None,
             after: tuple[datetime, str] | None = None) -> list[TextGeneration]:
        """Newest first; `after` is the (created_on, id) of the previous page's last row."""
        query = select(GenerationRow).where(GenerationRow.account_id == account_id)
        if user_id is not None:
            query = query.where(GenerationRow.user_id == user_id)
        if after is not None:
            created_on, generation_id = after
            query = query.where(or_(GenerationRow.created_on < created_on,
                                    and_(GenerationRow.created_on == created_on,
                                         GenerationRow.id < generation_id)))
        query = query.order_by(GenerationRow.created_on.desc(), GenerationRow.id.desc()) \
            .limit(limit)
        return [_to_generation(r) for r in self._s.scalars(query)]

    def with_status(self, statuses=ACTIVE) -> list[TextGeneration]:
        """Every account's generations in these states, oldest first (the runner's queue)."""
        query = select(GenerationRow).where(
            GenerationRow.status.in_([s.value for s in statuses])) \
            .order_by(GenerationRow.created_on, GenerationRow.id)
        return [_to_generation(r) for r in self._s.scalars(query)]
