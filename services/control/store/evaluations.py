"""Evaluations in the metadata DB, as domain `Evaluation`s."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.control.domain.evaluations import (
    ACTIVE,
    Evaluation,
    EvaluationStatus,
    EvaluationTask,
    Generation,
    LabelMetric,
)
from services.control.store.tables import EvaluationRow

_PLAIN = ("account_id", "user_id", "request_id", "model", "base_model", "model_version",
          "adapter_id", "query", "progress", "error", "rows", "rows_done", "created_on",
          "started_on", "finished_on", "updated_on", "job_id", "role", "prompt_tokens",
          "completion_tokens", "data_uri", "attempts")


def _to_evaluation(row: EvaluationRow) -> Evaluation:
    return Evaluation(
        id=row.id, task=EvaluationTask(row.task), generation=Generation.from_dict(row.generation),
        status=EvaluationStatus(row.status), metrics=dict(row.metrics or {}),
        labels=[LabelMetric(**m) for m in row.labels or []], version=row.version,
        **{name: getattr(row, name) for name in _PLAIN})


def _copy_onto(evaluation: Evaluation, row: EvaluationRow) -> None:
    for name in _PLAIN:
        setattr(row, name, getattr(evaluation, name))
    row.task = evaluation.task.value
    row.generation = evaluation.generation.to_dict()
    row.status = evaluation.status.value
    row.metrics = dict(evaluation.metrics)
    row.labels = [{"label": m.label, "precision": m.precision, "recall": m.recall, "f1": m.f1,
                   "support": m.support} for m in evaluation.labels]


class EvaluationRepository:
    def __init__(self, session: Session):
        self._s = session

    def add(self, evaluation: Evaluation) -> Evaluation:
        row = EvaluationRow(id=evaluation.id)
        _copy_onto(evaluation, row)
        self._s.add(row)
        self._s.flush()
        return _to_evaluation(row)

    def get(self, evaluation_id: str, account_id: str | None = None) -> Evaluation | None:
        row = self._s.get(EvaluationRow, evaluation_id)
        if row is None or (account_id is not None and row.account_id != account_id):
            return None
        return _to_evaluation(row)

    def save(self, evaluation: Evaluation) -> Evaluation:
        """Write back an evaluation read in this transaction; StaleDataError if it changed."""
        row = self._s.get(EvaluationRow, evaluation.id)
        if row is None:
            raise LookupError(evaluation.id)
        if row.version != evaluation.version:
            raise StaleDataError(f"evaluation {evaluation.id} changed since it was read")
        _copy_onto(evaluation, row)
        self._s.flush()
        return _to_evaluation(row)

    def by_request_id(self, account_id: str, request_id: str) -> Evaluation | None:
        row = self._s.scalar(select(EvaluationRow).where(
            EvaluationRow.account_id == account_id, EvaluationRow.request_id == request_id))
        return None if row is None else _to_evaluation(row)

    def for_job(self, job_id: str) -> list[Evaluation]:
        query = select(EvaluationRow).where(EvaluationRow.job_id == job_id) \
            .order_by(EvaluationRow.created_on, EvaluationRow.id)
        return [_to_evaluation(r) for r in self._s.scalars(query)]

    def page(self, account_id: str, limit: int, model: str | None = None,
             after: tuple[datetime, str] | None = None,
             adapter_id: int | None = None) -> list[Evaluation]:
        """Newest first; `after` is the (created_on, id) of the previous page's last row;
        `adapter_id` keeps one version of a fine-tuned model."""
        query = select(EvaluationRow).where(EvaluationRow.account_id == account_id)
        if model is not None:
            query = query.where(EvaluationRow.model == model)
        if adapter_id is not None:
            query = query.where(EvaluationRow.adapter_id == adapter_id)
        if after is not None:
            created_on, evaluation_id = after
            query = query.where(or_(EvaluationRow.created_on < created_on,
                                    and_(EvaluationRow.created_on == created_on,
                                         EvaluationRow.id < evaluation_id)))
        query = query.order_by(EvaluationRow.created_on.desc(), EvaluationRow.id.desc()) \
            .limit(limit)
        return [_to_evaluation(r) for r in self._s.scalars(query)]

    def with_status(self, statuses=ACTIVE) -> list[Evaluation]:
        """Every account's evaluations in these states, oldest first (the runner's queue)."""
        query = select(EvaluationRow).where(
            EvaluationRow.status.in_([s.value for s in statuses])) \
            .order_by(EvaluationRow.created_on, EvaluationRow.id)
        return [_to_evaluation(r) for r in self._s.scalars(query)]
