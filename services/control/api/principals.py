"""The caller of the current RPC, as the AuthInterceptor attached it. Servicers hand it to
core, which decides what it may do (services.control.core.authorization)."""

from __future__ import annotations

from services.common.errors import Unauthenticated
from services.common.interceptors import current_principal
from services.control.domain.principals import Principal


def user() -> Principal:
    principal = current_principal()
    if not isinstance(principal, Principal):  # the service token is not a user's key
        raise Unauthenticated("this RPC needs a user's API key")
    return principal
