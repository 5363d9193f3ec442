"""Accounts, users and API keys (stored as hashes only)."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.keys import generate_api_key, hash_key, key_matches
from services.control.domain.principals import ApiKeyInfo, Principal, User
from services.control.store.tables import AccountRow, ApiKeyRow, RoleRow, UserRow


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class AccountRepository:
    def __init__(self, session: Session):
        self._s = session

    def any_account(self) -> bool:
        return self._s.scalar(select(AccountRow.id).limit(1)) is not None

    def exists(self, account_id: str) -> bool:
        return self._s.get(AccountRow, account_id) is not None

    def create_account(self, account_id: str, now: datetime) -> str:
        self._s.add(AccountRow(id=account_id, created_on=now))
        self._s.flush()
        return account_id

    # -- users ----------------------------------------------------------------------------

    def create_user(self, account_id: str, name: str, now: datetime,
                    default_role_id: str | None = None) -> str:
        user = UserRow(id=_new_id("usr"), account_id=account_id, name=name, created_on=now,
                       default_role_id=default_role_id)
        self._s.add(user)
        self._s.flush()
        return user.id

    def _users(self, *conditions) -> list[User]:
        rows = self._s.execute(
            select(UserRow, RoleRow.name)
            .outerjoin(RoleRow, RoleRow.id == UserRow.default_role_id)
            .where(*conditions).order_by(UserRow.name))
        return [User(id=u.id, account_id=u.account_id, name=u.name, created_on=u.created_on,
                     default_role=role) for u, role in rows]

    def user(self, account_id: str, name: str) -> User | None:
        found = self._users(UserRow.account_id == account_id, UserRow.name == name)
        return found[0] if found else None

    def user_by_id(self, user_id: str) -> User | None:
        found = self._users(UserRow.id == user_id)
        return found[0] if found else None

    def users(self, account_id: str) -> list[User]:
        return self._users(UserRow.account_id == account_id)

    def user_names(self, user_ids: set[str]) -> dict[str, str]:
        if not user_ids:
            return {}
        return dict(self._s.execute(select(UserRow.id, UserRow.name).where(
            UserRow.id.in_(list(user_ids)))).all())

    def default_role_id(self, user_id: str) -> str | None:
        return self._s.scalar(select(UserRow.default_role_id).where(UserRow.id == user_id))

    def set_default_role(self, user_id: str, role_id: str | None) -> None:
        self._s.get_one(UserRow, user_id).default_role_id = role_id
        self._s.flush()

    # -- keys -----------------------------------------------------------------------------

    def create_key(self, user_id: str, now: datetime) -> tuple[str, str]:
        """A new key for the user: (key id, the key itself, which is never stored)."""
        key = generate_api_key()
        row = ApiKeyRow(id=_new_id("key"), user_id=user_id, key_hash=hash_key(key),
                        created_on=now)
        self._s.add(row)
        self._s.flush()
        return row.id, key

    def _keys(self, *conditions) -> list[ApiKeyInfo]:
        rows = self._s.execute(
            select(ApiKeyRow, UserRow.name).join(UserRow, UserRow.id == ApiKeyRow.user_id)
            .where(*conditions).order_by(ApiKeyRow.created_on, ApiKeyRow.id))
        return [ApiKeyInfo(id=k.id, user_id=k.user_id, user_name=name, created_on=k.created_on,
                           revoked_on=k.revoked_on) for k, name in rows]

    def keys(self, account_id: str, user_id: str | None = None) -> list[ApiKeyInfo]:
        conditions = [UserRow.account_id == account_id]
        if user_id is not None:
            conditions.append(ApiKeyRow.user_id == user_id)
        return self._keys(*conditions)

    def key(self, account_id: str, key_id: str) -> ApiKeyInfo | None:
        found = self._keys(UserRow.account_id == account_id, ApiKeyRow.id == key_id)
        return found[0] if found else None

    def revoke_key(self, key_id: str, now: datetime) -> None:
        row = self._s.get_one(ApiKeyRow, key_id)
        if row.revoked_on is None:
            row.revoked_on = now
            self._s.flush()

    def active_key_count(self, user_ids: set[str]) -> int:
        if not user_ids:
            return 0
        return self._s.scalar(select(func.count(ApiKeyRow.id)).where(
            ApiKeyRow.user_id.in_(list(user_ids)), ApiKeyRow.revoked_on.is_(None))) or 0

    def authenticate(self, key: str) -> Principal | None:
        """The principal of an unrevoked key, or None."""
        found = self._s.execute(
            select(ApiKeyRow, UserRow)
            .join(UserRow, UserRow.id == ApiKeyRow.user_id)
            .where(ApiKeyRow.key_hash == hash_key(key), ApiKeyRow.revoked_on.is_(None))
        ).first()
        if found is None:
            return None
        key_row, user = found
        if not key_matches(key, key_row.key_hash):  # constant-time confirmation
            return None
        return Principal(account_id=user.account_id, user_id=user.id, user_name=user.name,
                         key_id=key_row.id)
