"""Accounts, users and API keys (stored as hashes only)."""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.keys import generate_api_key, hash_key, key_matches
from services.control.domain.principals import Principal
from services.control.store.tables import AccountRow, ApiKeyRow, UserRow


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

    def create_user(self, account_id: str, name: str, now: datetime) -> str:
        user = UserRow(id=_new_id("usr"), account_id=account_id, name=name, created_on=now)
        self._s.add(user)
        self._s.flush()
        return user.id

    def create_key(self, user_id: str, now: datetime) -> tuple[str, str]:
        """A new key for the user: (key id, the key itself, which is never stored)."""
        key = generate_api_key()
        row = ApiKeyRow(id=_new_id("key"), user_id=user_id, key_hash=hash_key(key),
                        created_on=now)
        self._s.add(row)
        self._s.flush()
        return row.id, key

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
