"""Jobs in the metadata DB, as domain `Job`s."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from services.control.domain.jobs import ACTIVE, Job, JobStatus
from services.control.store.tables import JobRow

_FIELDS = [f.name for f in dataclasses.fields(Job) if f.name not in ("status", "version")]


def _to_job(row: JobRow) -> Job:
    return Job(status=JobStatus(row.status), version=row.version,
               **{name: getattr(row, name) for name in _FIELDS})


def _copy_onto(job: Job, row: JobRow) -> None:
    for name in _FIELDS:
        if name != "id":
            setattr(row, name, getattr(job, name))
    row.status = job.status.value


class JobRepository:
    def __init__(self, session: Session):
        self._s = session

    def add(self, job: Job) -> Job:
        row = JobRow(id=job.id)
        _copy_onto(job, row)
        self._s.add(row)
        self._s.flush()
        return _to_job(row)

    def get(self, job_id: str, account_id: str | None = None) -> Job | None:
        """The job, or None when absent or (with account_id) owned by another account."""
        row = self._s.get(JobRow, job_id)
        if row is None or (account_id is not None and row.account_id != account_id):
            return None
        return _to_job(row)

    def save(self, job: Job) -> Job:
        """Write a job read in this transaction back; StaleDataError if it changed meanwhile."""
        row = self._s.get(JobRow, job.id)
        if row is None:
            raise LookupError(job.id)
        if row.version != job.version:
            raise StaleDataError(f"job {job.id} changed since it was read")
        _copy_onto(job, row)
        self._s.flush()
        return _to_job(row)

    def by_request_id(self, account_id: str, request_id: str) -> Job | None:
        row = self._s.scalar(select(JobRow).where(JobRow.account_id == account_id,
                                                  JobRow.request_id == request_id))
        return None if row is None else _to_job(row)

    def active_with_model_name(self, account_id: str, model_name: str) -> Job | None:
        row = self._s.scalar(select(JobRow).where(
            JobRow.account_id == account_id, JobRow.model_name == model_name,
            JobRow.status.in_([s.value for s in ACTIVE])).limit(1))
        return None if row is None else _to_job(row)

    def page(self, account_id: str, limit: int,
             after: tuple[datetime, str] | None = None,
             owner_role_ids: frozenset[str] | None = None) -> list[Job]:
        """Newest first; `after` is the (created_on, id) of the last job of the previous page;
        with `owner_role_ids`, only jobs owned by one of those roles."""
        query = select(JobRow).where(JobRow.account_id == account_id)
        if owner_role_ids is not None:
            query = query.where(JobRow.owner_role_id.in_(list(owner_role_ids)))
        if after is not None:
            created_on, job_id = after
            query = query.where(or_(JobRow.created_on < created_on,
                                    and_(JobRow.created_on == created_on, JobRow.id < job_id)))
        query = query.order_by(JobRow.created_on.desc(), JobRow.id.desc()).limit(limit)
        return [_to_job(row) for row in self._s.scalars(query)]

    def active(self) -> list[Job]:
        """Every non-terminal job of every account (the reconciler's work list)."""
        query = select(JobRow).where(JobRow.status.in_([s.value for s in ACTIVE])) \
            .order_by(JobRow.created_on)
        return [_to_job(row) for row in self._s.scalars(query)]

    def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs of every account are in each state (the metrics' jobs by state)."""
        query = select(JobRow.status, func.count()).group_by(JobRow.status)
        return {JobStatus(status): count for status, count in self._s.execute(query)}
