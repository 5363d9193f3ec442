"""Roles, role grants and privilege grants of an account."""

from __future__ import annotations

import secrets
from collections import defaultdict
from datetime import datetime
from typing import cast

from sqlalchemy import CursorResult, and_, delete, or_, select, update
from sqlalchemy.orm import Session

from services.control.domain.principals import Role
from services.control.domain.privileges import GrantRecord, ObjectType, Privilege, SecurableObject
from services.control.store.tables import (
    ModelShareRow,
    PrivilegeGrantRow,
    RoleGrantRow,
    RoleRow,
    UserRow,
)

USER = "USER"
ROLE = "ROLE"


def _to_role(row: RoleRow) -> Role:
    return Role(id=row.id, account_id=row.account_id, name=row.name, created_on=row.created_on,
                comment=row.comment or "")


class AccessRepository:
    def __init__(self, session: Session):
        self._s = session

    # -- roles ----------------------------------------------------------------------------

    def create_role(self, account_id: str, name: str, now: datetime, comment: str = "") -> Role:
        row = RoleRow(id=f"rol_{secrets.token_hex(8)}", account_id=account_id, name=name,
                      comment=comment, created_on=now)
        self._s.add(row)
        self._s.flush()
        return _to_role(row)

    def role(self, account_id: str, name: str) -> Role | None:
        row = self._s.scalar(select(RoleRow).where(RoleRow.account_id == account_id,
                                                   RoleRow.name == name))
        return None if row is None else _to_role(row)

    def role_by_id(self, role_id: str) -> Role | None:
        row = self._s.get(RoleRow, role_id)
        return None if row is None else _to_role(row)

    def roles(self, account_id: str) -> list[Role]:
        return [_to_role(r) for r in self._s.scalars(
            select(RoleRow).where(RoleRow.account_id == account_id).order_by(RoleRow.name))]

    def drop_role(self, role: Role) -> None:
        """The role, every grant of it or to it, and users' defaults pointing at it."""
        self._s.execute(delete(PrivilegeGrantRow).where(PrivilegeGrantRow.role_id == role.id))
        self._s.execute(delete(RoleGrantRow).where(or_(
            RoleGrantRow.role_id == role.id,
            and_(RoleGrantRow.grantee_type == ROLE, RoleGrantRow.grantee_id == role.id))))
        self._s.execute(update(UserRow).where(UserRow.default_role_id == role.id)
                        .values(default_role_id=None))
        self._s.execute(delete(RoleRow).where(RoleRow.id == role.id))
        self._s.flush()

    # -- role grants ----------------------------------------------------------------------

    def grant_role(self, account_id: str, role_id: str, grantee_type: str, grantee_id: str,
                   granted_by: str, now: datetime) -> bool:
        """False when it was already granted."""
        if self._role_grant(role_id, grantee_type, grantee_id) is not None:
            return False
        self._s.add(RoleGrantRow(account_id=account_id, role_id=role_id,
                                 grantee_type=grantee_type, grantee_id=grantee_id,
                                 granted_by=granted_by, created_on=now))
        self._s.flush()
        return True

    def revoke_role(self, role_id: str, grantee_type: str, grantee_id: str) -> bool:
        row = self._role_grant(role_id, grantee_type, grantee_id)
        if row is None:
            return False
        self._s.delete(row)
        self._s.flush()
        return True

    def _role_grant(self, role_id: str, grantee_type: str, grantee_id: str):
        return self._s.scalar(select(RoleGrantRow).where(
            RoleGrantRow.role_id == role_id, RoleGrantRow.grantee_type == grantee_type,
            RoleGrantRow.grantee_id == grantee_id))

    def user_role_ids(self, user_id: str) -> set[str]:
        """Roles granted directly to the user."""
        return set(self._s.scalars(select(RoleGrantRow.role_id).where(
            RoleGrantRow.grantee_type == USER, RoleGrantRow.grantee_id == user_id)))

    def role_hierarchy(self, account_id: str) -> dict[str, set[str]]:
        """role id -> ids of the roles granted to it (which it inherits)."""
        inherits: dict[str, set[str]] = defaultdict(set)
        for role_id, grantee in self._s.execute(select(
                RoleGrantRow.role_id, RoleGrantRow.grantee_id).where(
                RoleGrantRow.account_id == account_id, RoleGrantRow.grantee_type == ROLE)):
            inherits[grantee].add(role_id)
        return inherits

    def role_names(self, role_ids: set[str] | frozenset[str]) -> dict[str, str]:
        if not role_ids:
            return {}
        return dict(self._s.execute(select(RoleRow.id, RoleRow.name).where(
            RoleRow.id.in_(list(role_ids)))).all())

    def users_with_role(self, role_id: str) -> set[str]:
        return set(self._s.scalars(select(RoleGrantRow.grantee_id).where(
            RoleGrantRow.role_id == role_id, RoleGrantRow.grantee_type == USER)))

    # -- privilege grants -----------------------------------------------------------------

    def grant_privilege(self, account_id: str, role_id: str, privilege: Privilege,
                        obj: SecurableObject, granted_by: str, now: datetime) -> bool:
        if self._privilege_grant(role_id, privilege, obj) is not None:
            return False
        self._s.add(PrivilegeGrantRow(
            account_id=account_id, role_id=role_id, privilege=privilege.value,
            object_type=obj.type.value, object_name=obj.name, granted_by=granted_by,
            created_on=now))
        self._s.flush()
        return True

    def revoke_privilege(self, role_id: str, privilege: Privilege, obj: SecurableObject) -> bool:
        row = self._privilege_grant(role_id, privilege, obj)
        if row is None:
            return False
        self._s.delete(row)
        self._s.flush()
        return True

    def _privilege_grant(self, role_id: str, privilege: Privilege, obj: SecurableObject):
        return self._s.scalar(select(PrivilegeGrantRow).where(
            PrivilegeGrantRow.role_id == role_id,
            PrivilegeGrantRow.privilege == privilege.value,
            PrivilegeGrantRow.object_type == obj.type.value,
            PrivilegeGrantRow.object_name == obj.name))

    def privileges_of(self, role_ids: set[str] | frozenset[str]
                      ) -> set[tuple[Privilege, SecurableObject]]:
        if not role_ids:
            return set()
        rows = self._s.execute(select(
            PrivilegeGrantRow.privilege, PrivilegeGrantRow.object_type,
            PrivilegeGrantRow.object_name).where(PrivilegeGrantRow.role_id.in_(list(role_ids))))
        return {(Privilege(p), SecurableObject(ObjectType(t), n)) for p, t, n in rows}

    def owners(self, account_id: str, obj: SecurableObject) -> list[str]:
        return list(self._s.scalars(select(PrivilegeGrantRow.role_id).where(
            PrivilegeGrantRow.account_id == account_id,
            PrivilegeGrantRow.privilege == Privilege.OWNERSHIP.value,
            PrivilegeGrantRow.object_type == obj.type.value,
            PrivilegeGrantRow.object_name == obj.name)))

    def delete_grants_on(self, account_id: str, obj: SecurableObject) -> int:
        """Dropping an object drops its grants, and a model its shares with other accounts:
        a new object of the same name starts clean."""
        if obj.type is ObjectType.MODEL:
            self._s.execute(delete(ModelShareRow).where(ModelShareRow.account_id == account_id,
                                                        ModelShareRow.model_name == obj.name))
        result = self._s.execute(delete(PrivilegeGrantRow).where(
            PrivilegeGrantRow.account_id == account_id,
            PrivilegeGrantRow.object_type == obj.type.value,
            PrivilegeGrantRow.object_name == obj.name))
        self._s.flush()
        return cast(CursorResult, result).rowcount or 0

    def delete_schema_grants_in(self, account_id: str, database: str) -> int:
        """A dropped database's schemas go with it, and so do the grants on them."""
        result = self._s.execute(delete(PrivilegeGrantRow).where(
            PrivilegeGrantRow.account_id == account_id,
            PrivilegeGrantRow.object_type == ObjectType.SCHEMA.value,
            PrivilegeGrantRow.object_name.startswith(f"{database}.", autoescape=True)))
        self._s.flush()
        return cast(CursorResult, result).rowcount or 0

    # -- SHOW GRANTS ----------------------------------------------------------------------

    def privilege_grants(self, account_id: str, *, role_id: str | None = None,
                         obj: SecurableObject | None = None) -> list[GrantRecord]:
        query = select(PrivilegeGrantRow, RoleRow.name).join(
            RoleRow, RoleRow.id == PrivilegeGrantRow.role_id).where(
            PrivilegeGrantRow.account_id == account_id)
        if role_id is not None:
            query = query.where(PrivilegeGrantRow.role_id == role_id)
        if obj is not None:
            query = query.where(PrivilegeGrantRow.object_type == obj.type.value,
                                PrivilegeGrantRow.object_name == obj.name)
        query = query.order_by(PrivilegeGrantRow.object_type, PrivilegeGrantRow.object_name,
                               PrivilegeGrantRow.privilege, RoleRow.name)
        return [GrantRecord(created_on=row.created_on, privilege=row.privilege,
                            granted_on=row.object_type, name=row.object_name,
                            granted_to=ROLE, grantee_name=role, granted_by=row.granted_by)
                for row, role in self._s.execute(query)]

    def role_grants(self, account_id: str, *, role_id: str | None = None,
                    grantee_type: str | None = None,
                    grantee_id: str | None = None) -> list[GrantRecord]:
        """Role grants, as SHOW GRANTS shows them: USAGE on ROLE r granted to a user or role."""
        query = select(RoleGrantRow, RoleRow.name).join(
            RoleRow, RoleRow.id == RoleGrantRow.role_id).where(
            RoleGrantRow.account_id == account_id)
        if role_id is not None:
            query = query.where(RoleGrantRow.role_id == role_id)
        if grantee_type is not None:
            query = query.where(RoleGrantRow.grantee_type == grantee_type,
                                RoleGrantRow.grantee_id == grantee_id)
        rows = self._s.execute(query).all()
        user_ids = {r.grantee_id for r, _ in rows if r.grantee_type == USER}
        role_ids = {r.grantee_id for r, _ in rows if r.grantee_type == ROLE}
        names = self.role_names(role_ids)
        if user_ids:
            names.update(self._s.execute(select(UserRow.id, UserRow.name).where(
                UserRow.id.in_(list(user_ids)))).all())
        records = [GrantRecord(created_on=r.created_on, privilege=Privilege.USAGE.value,
                               granted_on=ROLE, name=role, granted_to=r.grantee_type,
                               grantee_name=names.get(r.grantee_id, r.grantee_id),
                               granted_by=r.granted_by) for r, role in rows]
        return sorted(records, key=lambda g: (g.name, g.granted_to, g.grantee_name))
