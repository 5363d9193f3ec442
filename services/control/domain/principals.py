"""Who is calling: a user of an account (API key) or a data-plane service (service token);
and the account directory's records (users, roles, API keys)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Principal:
    """An authenticated user. What it may do is its roles' business: see domain/privileges.py."""

    account_id: str
    user_id: str
    user_name: str
    key_id: str


@dataclass(frozen=True)
class ServicePrincipal:
    """A data plane (trainer, inference) holding the shared service token."""

    name: str = "service"


@dataclass(frozen=True)
class User:
    id: str
    account_id: str
    name: str
    created_on: datetime
    default_role: str | None = None   # the role that owns what the user creates


@dataclass(frozen=True)
class Role:
    id: str
    account_id: str
    name: str
    created_on: datetime
    comment: str = ""


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as listed: never the key itself, which is shown once at creation."""

    id: str
    user_id: str
    user_name: str
    created_on: datetime
    revoked_on: datetime | None = None
