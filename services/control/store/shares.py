"""Models shared across accounts: USAGE on a model granted to another account (every role of
it, or one role by name). The rows only; who may share what is core.access_control's."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.control.domain.privileges import GrantRecord, ModelShare, ObjectType, Privilege
from services.control.store.tables import ModelShareRow

ACCOUNT = "ACCOUNT"
ROLE = "ROLE"


def _share(row: ModelShareRow) -> ModelShare:
    return ModelShare(owner_account_id=row.account_id, model=row.model_name,
                      grantee_account_id=row.grantee_account_id,
                      grantee_role=row.grantee_role or "")


class ShareRepository:
    def __init__(self, session: Session):
        self._s = session

    def _row(self, share: ModelShare, privilege: Privilege) -> ModelShareRow | None:
        return self._s.scalar(select(ModelShareRow).where(
            ModelShareRow.account_id == share.owner_account_id,
            ModelShareRow.model_name == share.model,
            ModelShareRow.privilege == privilege.value,
            ModelShareRow.grantee_account_id == share.grantee_account_id,
            ModelShareRow.grantee_role == share.grantee_role))

    def grant(self, share: ModelShare, granted_by: str, now: datetime,
              privilege: Privilege = Privilege.USAGE) -> bool:
        """False when it was already granted."""
        if self._row(share, privilege) is not None:
            return False
        self._s.add(ModelShareRow(
            account_id=share.owner_account_id, model_name=share.model,
            privilege=privilege.value, grantee_account_id=share.grantee_account_id,
            grantee_role=share.grantee_role, granted_by=granted_by, created_on=now))
        self._s.flush()
        return True

    def revoke(self, share: ModelShare, privilege: Privilege = Privilege.USAGE) -> bool:
        row = self._row(share, privilege)
        if row is None:
            return False
        self._s.delete(row)
        self._s.flush()
        return True

    def to_account(self, account_id: str) -> list[ModelShare]:
        """Every share granted to the account (to all its roles or to one), by owner and name."""
        return [_share(row) for row in self._s.scalars(
            select(ModelShareRow).where(ModelShareRow.grantee_account_id == account_id)
            .order_by(ModelShareRow.account_id, ModelShareRow.model_name))]

    def grants_on(self, account_id: str, model: str) -> list[GrantRecord]:
        """SHOW GRANTS ON MODEL, the owner's side: who the model is shared with."""
        rows = self._s.scalars(select(ModelShareRow).where(
            ModelShareRow.account_id == account_id, ModelShareRow.model_name == model)
            .order_by(ModelShareRow.grantee_account_id, ModelShareRow.grantee_role))
        return [GrantRecord(created_on=r.created_on, privilege=r.privilege,
                            granted_on=ObjectType.MODEL.value, name=r.model_name,
                            granted_to=ROLE if r.grantee_role else ACCOUNT,
                            grantee_name=r.grantee_role or r.grantee_account_id,
                            granted_by=r.granted_by, grantee_account=r.grantee_account_id)
                for r in rows]
