"""Usage: inference records, one per request id (a retried report is counted once), and
fine-tuning records, one per finished job."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Sequence

from sqlalchemy import and_, func, or_, select, true
from sqlalchemy.orm import Session

from services.control.domain.names import shared_model_name
from services.control.domain.usage import (
    FineTuningUsage,
    Grouping,
    InferenceUsage,
    UsageFilter,
    UsageGroup,
)
from services.control.store.tables import FineTuningUsageRow, UsageRow, UserRow


def _after(time_column, id_column, after: tuple[datetime, int] | None):
    """Rows after (time, id) in newest-first order."""
    if after is None:
        return true()
    time, row_id = after
    return or_(time_column < time, and_(time_column == time, id_column < row_id))


class UsageRepository:
    def __init__(self, session: Session):
        self._s = session

    # -- inference ------------------------------------------------------------------------

    def exists(self, account_id: str, request_id: str) -> bool:
        return self._s.scalar(select(UsageRow.id).where(
            UsageRow.account_id == account_id, UsageRow.request_id == request_id)) is not None

    def add(self, *, request_id: str, account_id: str, user_id: str, model: str,
            base_model: str, prompt_tokens: int, completion_tokens: int,
            created_on: datetime, credits: float = 0.0,
            model_account_id: str | None = None) -> None:
        self._s.add(UsageRow(request_id=request_id, account_id=account_id, user_id=user_id,
                             model=model, base_model=base_model, prompt_tokens=prompt_tokens,
                             completion_tokens=completion_tokens, created_on=created_on,
                             credits=credits, model_account_id=model_account_id))
        self._s.flush()

    def totals(self, account_id: str) -> tuple[int, int, int]:
        """(requests, prompt tokens, completion tokens) recorded for the account."""
        row = self._s.execute(
            select(func.count(UsageRow.id), func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
                   func.coalesce(func.sum(UsageRow.completion_tokens), 0))
            .where(UsageRow.account_id == account_id)).one()
        return int(row[0]), int(row[1]), int(row[2])

    def _inference_conditions(self, account_id: str, f: UsageFilter,
                              shared: bool = False) -> list:
        """The account's own usage; `shared`: other accounts' usage of its models (billed to
        them, named there `account.db.schema.model`)."""
        conditions = [UsageRow.model_account_id == account_id] if shared else \
            [UsageRow.account_id == account_id]
        if f.start_time is not None:
            conditions.append(UsageRow.created_on >= f.start_time)
        if f.end_time is not None:
            conditions.append(UsageRow.created_on < f.end_time)
        if f.model:
            conditions.append(UsageRow.model == (shared_model_name(account_id, f.model)
                                                 if shared else f.model))
        if f.user_id is not None:
            conditions.append(UsageRow.user_id == f.user_id)
        return conditions

    def inference_page(self, account_id: str, f: UsageFilter, limit: int,
                       after: tuple[datetime, int] | None = None
                       ) -> list[tuple[InferenceUsage, tuple[datetime, int]]]:
        """Newest first; each record with its position for the next page token."""
        query = (select(UsageRow, UserRow.name)
                 .outerjoin(UserRow, UserRow.id == UsageRow.user_id)
                 .where(*self._inference_conditions(account_id, f),
                        _after(UsageRow.created_on, UsageRow.id, after))
                 .order_by(UsageRow.created_on.desc(), UsageRow.id.desc()).limit(limit))
        return [(InferenceUsage(
            request_id=r.request_id, user_name=name or r.user_id, model=r.model,
            base_model=r.base_model, prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens, credits=r.credits, time=r.created_on),
            (r.created_on, r.id)) for r, name in self._s.execute(query)]

    def inference_groups(self, account_id: str, f: UsageFilter,
                         group_by: Sequence[Grouping], shared: bool = False) -> list[UsageGroup]:
        """Sums by the groupings; `shared`: other accounts' usage of this account's models,
        each model by its name in this account."""
        keys = {Grouping.MODEL: UsageRow.model, Grouping.USER: UsageRow.user_id,
                Grouping.DAY: func.date(UsageRow.created_on), Grouping.ACCOUNT: UsageRow.account_id}
        columns: list[Any] = [keys[g].label(g.value) for g in group_by]
        query = select(*columns, func.count(UsageRow.id),
                       func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
                       func.coalesce(func.sum(UsageRow.completion_tokens), 0),
                       func.coalesce(func.sum(UsageRow.credits), 0.0)
                       ).where(*self._inference_conditions(account_id, f, shared))
        if columns:
            query = query.group_by(*columns).order_by(*columns)
        rows = self._s.execute(query).all()
        users = self.user_names_of(
            {row[group_by.index(Grouping.USER)] for row in rows} if Grouping.USER in group_by
            else set())
        groups = []
        for row in rows:
            values = dict(zip(group_by, row[:len(group_by)], strict=True))
            requests, prompt, completion, credits = row[len(group_by):]
            if not requests:  # no rows at all: an ungrouped aggregate still returns one
                continue
            day = values.get(Grouping.DAY)
            user_id = values.get(Grouping.USER)
            model = values.get(Grouping.MODEL) or ""
            groups.append(UsageGroup(
                model=model.removeprefix(f"{account_id}.") if shared else model,
                account=values.get(Grouping.ACCOUNT) or "",
                user_name=users.get(user_id, user_id) if user_id else "",
                day=day.isoformat() if isinstance(day, (date, datetime)) else (day or ""),
                requests=int(requests), prompt_tokens=int(prompt),
                completion_tokens=int(completion), credits=float(credits)))
        # By the groupings in the order asked, users by name (the query sorted by id).
        fields = {Grouping.MODEL: "model", Grouping.USER: "user_name", Grouping.DAY: "day",
                  Grouping.ACCOUNT: "account"}
        return sorted(groups, key=lambda g: tuple(getattr(g, fields[k]) for k in group_by))

    def user_names_of(self, user_ids: set[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        return dict(self._s.execute(select(UserRow.id, UserRow.name).where(
            UserRow.id.in_(list(user_ids)))).all())

    # -- fine-tuning ----------------------------------------------------------------------

    def fine_tuning_recorded(self, job_id: str) -> bool:
        return self._s.scalar(select(FineTuningUsageRow.id).where(
            FineTuningUsageRow.job_id == job_id)) is not None

    def add_fine_tuning(self, *, account_id: str, job_id: str, user_id: str, model: str,
                        base_model: str, status: str, trained_tokens: int, credits: float,
                        start_time: datetime | None, end_time: datetime) -> None:
        self._s.add(FineTuningUsageRow(
            account_id=account_id, job_id=job_id, user_id=user_id, model=model,
            base_model=base_model, status=status, trained_tokens=trained_tokens,
            credits=credits, start_time=start_time, end_time=end_time))
        self._s.flush()

    def fine_tuning_page(self, account_id: str, f: UsageFilter, limit: int,
                         after: tuple[datetime, int] | None = None
                         ) -> list[tuple[FineTuningUsage, tuple[datetime, int]]]:
        row_type = FineTuningUsageRow
        conditions = [row_type.account_id == account_id,
                      _after(row_type.end_time, row_type.id, after)]
        if f.start_time is not None:
            conditions.append(row_type.end_time >= f.start_time)
        if f.end_time is not None:
            conditions.append(row_type.end_time < f.end_time)
        if f.model:
            conditions.append(row_type.model == f.model)
        if f.user_id is not None:
            conditions.append(row_type.user_id == f.user_id)
        query = (select(row_type, UserRow.name)
                 .outerjoin(UserRow, UserRow.id == row_type.user_id).where(*conditions)
                 .order_by(row_type.end_time.desc(), row_type.id.desc()).limit(limit))
        return [(FineTuningUsage(
            job_id=r.job_id, user_name=name or r.user_id, model=r.model,
            base_model=r.base_model, status=r.status, trained_tokens=r.trained_tokens,
            credits=r.credits, start_time=r.start_time, end_time=r.end_time),
            (r.end_time, r.id)) for r, name in self._s.execute(query)]
