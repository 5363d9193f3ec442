"""Inference usage records, one per request id (a retried report is counted once)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.control.store.tables import UsageRow


class UsageRepository:
    def __init__(self, session: Session):
        self._s = session

    def exists(self, account_id: str, request_id: str) -> bool:
        return self._s.scalar(select(UsageRow.id).where(
            UsageRow.account_id == account_id, UsageRow.request_id == request_id)) is not None

    def add(self, *, request_id: str, account_id: str, user_id: str, model: str,
            base_model: str, prompt_tokens: int, completion_tokens: int,
            created_on: datetime) -> None:
        self._s.add(UsageRow(request_id=request_id, account_id=account_id, user_id=user_id,
                             model=model, base_model=base_model, prompt_tokens=prompt_tokens,
                             completion_tokens=completion_tokens, created_on=created_on))
        self._s.flush()

    def totals(self, account_id: str) -> tuple[int, int, int]:
        """(requests, prompt tokens, completion tokens) recorded for the account."""
        row = self._s.execute(
            select(func.count(UsageRow.id), func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
                   func.coalesce(func.sum(UsageRow.completion_tokens), 0))
            .where(UsageRow.account_id == account_id)).one()
        return int(row[0]), int(row[1]), int(row[2])
