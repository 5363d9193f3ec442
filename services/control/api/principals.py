"""The caller of the current RPC, as the AuthInterceptor attached it, and the servicers' one
way to authorize it before touching an object."""

from __future__ import annotations

import asyncio

from services.common.errors import Unauthenticated
from services.common.interceptors import current_principal
from services.control.core.authorization import Authorizer
from services.control.domain.principals import Principal
from services.control.domain.privileges import Access, Privilege, SecurableObject


def user() -> Principal:
    principal = current_principal()
    if not isinstance(principal, Principal):  # the service token is not a user's key
        raise Unauthenticated("this RPC needs a user's API key")
    return principal


async def authorize(authorizer: Authorizer, privilege: Privilege,
                    obj: SecurableObject) -> tuple[Principal, Access]:
    """The caller and its access, once it is known to hold `privilege` on `obj`
    (PERMISSION_DENIED otherwise, whether or not the object exists)."""
    principal = user()
    return principal, await asyncio.to_thread(authorizer.authorize, principal, privilege, obj)


async def caller_access(authorizer: Authorizer) -> tuple[Principal, Access]:
    """The caller and its access, for RPCs that filter what they show by it."""
    principal = user()
    return principal, await asyncio.to_thread(authorizer.access, principal)
