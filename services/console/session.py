"""Who is signed in: the caller's API key in an HttpOnly, SameSite=Strict cookie.

The key is the only credential: control checks it on every call, so a revoked key signs the
browser out at its next page. It is never logged and never put in a URL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response

COOKIE = "finetune_console_key"
# A browser session's cookie (no Max-Age): closing the browser signs out.
MAX_KEY_CHARS = 512


class SignInRequired(Exception):
    """No key in the request: the console answers with the sign-in page."""


def signed_in_key(request: Request) -> str:
    key = request.cookies.get(COOKIE, "")
    if not key:
        raise SignInRequired()
    return key


def clean_key(text: str) -> str:
    """The key as typed or pasted (surrounding blanks and a `Bearer ` prefix dropped)."""
    key = text.strip()
    if key.lower().startswith("bearer "):
        key = key[len("bearer "):].strip()
    return key[:MAX_KEY_CHARS]


def remember_key(response: Response, key: str, path: str, secure: bool) -> None:
    response.set_cookie(COOKIE, key, path=path, httponly=True, samesite="strict",
                        secure=secure)


def forget_key(response: Response, path: str) -> None:
    response.delete_cookie(COOKIE, path=path, httponly=True, samesite="strict")


# The routes' parameter: `key: Key`.
Key = Annotated[str, Depends(signed_in_key)]
