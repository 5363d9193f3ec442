"""Authentication of every RPC, and the first start's bootstrap admin key."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from services.common.errors import Unauthenticated
from services.common.keys import tokens_equal
from services.control.core.access_control import create_account
from services.control.core.clock import Clock, utc_now
from services.control.domain.principals import Principal, ServicePrincipal
from services.control.store.database import Store

log = logging.getLogger(__name__)

# The data planes' services: the service token only, never a user key.
INTERNAL_METHOD_PREFIXES = (
    "/finetune.control.v1.JobReportingService/",
    "/finetune.control.v1.ModelResolutionService/",
)

DEFAULT_ACCOUNT = "default"
ADMIN_USER = "admin"


class Authenticator:
    """The AuthInterceptor's `authenticate(method, token)`."""

    def __init__(self, store: Store, service_token: str):
        self._store = store
        self._service_token = service_token

    async def __call__(self, method: str, token: str | None) -> Principal | ServicePrincipal:
        if method.startswith(INTERNAL_METHOD_PREFIXES):
            if tokens_equal(token, self._service_token):
                return ServicePrincipal()
            raise Unauthenticated("this service accepts only the service token")
        if not token:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        principal = await asyncio.to_thread(
            self._store.run, lambda tx: tx.accounts.authenticate(token))
        if principal is None:
            raise Unauthenticated("invalid API key")
        return principal


def bootstrap_admin(store: Store, key_file: Path, clock: Clock = utc_now) -> str | None:
    """On an empty database: account `default`, user `admin` holding ACCOUNTADMIN and an API
    key, written to `key_file` (mode 0600). Returns the key, or None when the database was not
    empty."""
    def work(tx) -> str | None:
        if tx.accounts.any_account():
            return None
        return create_account(tx, DEFAULT_ACCOUNT, ADMIN_USER, clock()).key

    try:
        key = store.run(work)
    except IntegrityError:  # another control process bootstrapped the same database first
        return None
    if key is not None:
        write_secret(key_file, key)
        log.warning("created account %s, user %s; bootstrap API key (shown once, also in %s): %s",
                    DEFAULT_ACCOUNT, ADMIN_USER, key_file, key)
    return key


def write_secret(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
