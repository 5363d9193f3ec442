"""The job event log in the metadata DB."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.control.domain.events import EventLevel, JobEvent, NewEvent
from services.control.store.tables import JobEventRow


def _to_event(row: JobEventRow) -> JobEvent:
    return JobEvent(id=row.id, job_id=row.job_id, time=row.created_on,
                    level=EventLevel(row.level), type=row.type, message=row.message,
                    metrics=dict(row.metrics or {}))


class EventRepository:
    def __init__(self, session: Session):
        self._s = session

    def add(self, job_id: str, events: Iterable[NewEvent], now: datetime) -> None:
        for event in events:
            self._s.add(JobEventRow(job_id=job_id, created_on=now, level=event.level.value,
                                    type=event.type, message=event.message,
                                    metrics=dict(event.metrics) or None))
        self._s.flush()

    def page(self, job_id: str, limit: int, after_id: int | None = None,
             newest_first: bool = False) -> list[JobEvent]:
        """A job's events in id order (or reversed), after the event `after_id`."""
        query = select(JobEventRow).where(JobEventRow.job_id == job_id)
        if after_id is not None:
            query = query.where(JobEventRow.id < after_id if newest_first
                                else JobEventRow.id > after_id)
        order = JobEventRow.id.desc() if newest_first else JobEventRow.id
        return [_to_event(r) for r in self._s.scalars(query.order_by(order).limit(limit))]
