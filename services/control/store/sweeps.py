"""Sweeps in the metadata DB, as domain `Sweep`s: one row each, its trials a JSON list (at
most MAX_TRIALS, always read and written with the sweep under its optimistic lock)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from services.control.domain.sweeps import Budget, SearchSpace, Sweep, SweepStatus, Trial
from services.control.store.tables import Base, UtcDateTime


class SweepRow(Base):
    """One hyperparameter sweep (CreateSweep) and its trials."""

    __tablename__ = "sweeps"
    __table_args__ = (
        UniqueConstraint("account_id", "request_id", name="uq_sweeps_account_request"),
        Index("ix_sweeps_account_created", "account_id", "created_on"),
        Index("ix_sweeps_settled", "settled"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    user_name: Mapped[str] = mapped_column(String(255))
    owner_role_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model: Mapped[str] = mapped_column(String(800))
    base_model: Mapped[str] = mapped_column(String(255))
    training_query: Mapped[str] = mapped_column(Text)
    validation_query: Mapped[str] = mapped_column(Text)
    options: Mapped[dict] = mapped_column(JSON)
    evaluation: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    space: Mapped[dict] = mapped_column(JSON)
    budget: Mapped[dict] = mapped_column(JSON)
    objective: Mapped[str] = mapped_column(String(64))
    minimize: Mapped[bool] = mapped_column(Boolean)
    delete_candidates: Mapped[bool] = mapped_column(Boolean)
    trials: Mapped[list] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    settled: Mapped[bool] = mapped_column(Boolean)
    best_trial: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    estimated_trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    created_on: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_on: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)

    __mapper_args__ = {"version_id_col": version}


_PLAIN = ("account_id", "user_id", "user_name", "owner_role_id", "request_id", "model",
          "base_model", "training_query", "validation_query", "options", "evaluation",
          "objective", "minimize", "delete_candidates", "settled", "best_trial", "error",
          "estimated_trained_tokens", "created_on", "finished_on", "updated_on")


def _to_sweep(row: SweepRow) -> Sweep:
    return Sweep(id=row.id, space=SearchSpace.from_dict(row.space),
                 budget=Budget.from_dict(row.budget), status=SweepStatus(row.status),
                 trials=[Trial.from_dict(t) for t in row.trials], version=row.version,
                 **{name: getattr(row, name) for name in _PLAIN})


def _copy_onto(sweep: Sweep, row: SweepRow) -> None:
    for name in _PLAIN:
        setattr(row, name, getattr(sweep, name))
    row.space = sweep.space.to_dict()
    row.budget = sweep.budget.to_dict()
    row.status = sweep.status.value
    row.trials = [t.to_dict() for t in sweep.trials]


class SweepRepository:
    def __init__(self, session: Session):
        self._s = session

    def add(self, sweep: Sweep) -> Sweep:
        row = SweepRow(id=sweep.id)
        _copy_onto(sweep, row)
        self._s.add(row)
        self._s.flush()
        return _to_sweep(row)

    def get(self, sweep_id: str, account_id: str | None = None) -> Sweep | None:
        row = self._s.get(SweepRow, sweep_id)
        if row is None or (account_id is not None and row.account_id != account_id):
            return None
        return _to_sweep(row)

    def save(self, sweep: Sweep) -> Sweep:
        """Write back a sweep read in this transaction; StaleDataError if it changed."""
        row = self._s.get(SweepRow, sweep.id)
        if row is None:
            raise LookupError(sweep.id)
        if row.version != sweep.version:
            raise StaleDataError(f"sweep {sweep.id} changed since it was read")
        _copy_onto(sweep, row)
        self._s.flush()
        return _to_sweep(row)

    def by_request_id(self, account_id: str, request_id: str) -> Sweep | None:
        row = self._s.scalar(select(SweepRow).where(SweepRow.account_id == account_id,
                                                    SweepRow.request_id == request_id))
        return None if row is None else _to_sweep(row)

    def running_with_model(self, account_id: str, model: str) -> Sweep | None:
        """The running sweep that will register `model`, if any (it holds the name)."""
        row = self._s.scalar(select(SweepRow).where(
            SweepRow.account_id == account_id, SweepRow.model == model,
            SweepRow.status == SweepStatus.RUNNING.value).limit(1))
        return None if row is None else _to_sweep(row)

    def unsettled(self) -> list[Sweep]:
        """Every account's sweeps whose trials the runner still follows, oldest first."""
        query = select(SweepRow).where(SweepRow.settled.is_(False)) \
            .order_by(SweepRow.created_on, SweepRow.id)
        return [_to_sweep(r) for r in self._s.scalars(query)]

    def page(self, account_id: str, limit: int, owner_role_ids: frozenset[str] | None = None,
             after: tuple[datetime, str] | None = None) -> list[Sweep]:
        """Newest first; only those owned by `owner_role_ids` unless None (an admin)."""
        query = select(SweepRow).where(SweepRow.account_id == account_id)
        if owner_role_ids is not None:
            query = query.where(SweepRow.owner_role_id.in_(list(owner_role_ids)))
        if after is not None:
            created_on, sweep_id = after
            query = query.where(or_(SweepRow.created_on < created_on,
                                    and_(SweepRow.created_on == created_on,
                                         SweepRow.id < sweep_id)))
        query = query.order_by(SweepRow.created_on.desc(), SweepRow.id.desc()).limit(limit)
        return [_to_sweep(r) for r in self._s.scalars(query)]
