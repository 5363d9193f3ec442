"""Who is calling: a user of an account (API key) or a data-plane service (service token)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """An authenticated user. Roles and grants come later; today a user may do everything
    within its own account and nothing outside it."""

    account_id: str
    user_id: str
    user_name: str
    key_id: str


@dataclass(frozen=True)
class ServicePrincipal:
    """A data plane (trainer, inference) holding the shared service token."""

    name: str = "service"
