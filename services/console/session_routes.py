"""Sign in with an API key (checked by control's WhoAmI), sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from services.console import session
from services.console.page_data import CALL_ERRORS, refusal_of
from services.console.rendering import base_path, render
from services.openai_api.context import Context

router = APIRouter()


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse(f"{base_path(request)}/jobs", status_code=303)


EXPIRED = "control no longer accepts the key this browser signed in with: sign in again"


@router.get("/signin")
async def sign_in_page(request: Request, expired: bool = False) -> Response:
    return render(request, "signin.html", {"error": EXPIRED if expired else ""})


@router.post("/signin")
async def sign_in(request: Request, ctx: Context,
                  api_key: Annotated[str, Form(max_length=4096)] = "") -> Response:
    key = session.clean_key(api_key)
    if not key:
        return render(request, "signin.html", {"error": "an API key is required"}, status=400)
    try:
        await ctx.control.whoami(key)
    except CALL_ERRORS as exc:
        status, message = refusal_of(exc)
        return render(request, "signin.html", {"error": message}, status=status)
    response = RedirectResponse(f"{base_path(request)}/jobs", status_code=303)
    session.remember_key(response, key, base_path(request) or "/",
                         secure=request.url.scheme == "https")
    return response


@router.post("/signout")
async def sign_out(request: Request) -> Response:
    response = RedirectResponse(f"{base_path(request)}/signin", status_code=303)
    session.forget_key(response, base_path(request) or "/")
    return response
