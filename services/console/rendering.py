"""The templates and how a response is rendered: a whole page, or the fragment htmx asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from services.console import pages
from services.openai_api.control import ControlApi

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.filters["when"] = pages.when
TEMPLATES.env.filters["evaluation_status"] = pages.evaluation_status
TEMPLATES.env.filters["event_level"] = pages.event_level
TEMPLATES.env.globals["STATES"] = pages.STATES

NAV = (("jobs", "Jobs"), ("jobs/new", "Create job"), ("models", "Models"),
       ("playground", "Playground"), ("usage", "Usage"))


def base_path(request: Request) -> str:
    """Where the console is mounted (/console): links are made from it, so the console works
    under any prefix."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(request: Request, template: str, context: Mapping[str, Any] | None = None,
           status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    values = {"base": base_path(request), "nav": NAV, **(context or {})}
    response: HTMLResponse = TEMPLATES.TemplateResponse(request, template, values,
                                                        status_code=status, headers=headers)
    return response


async def page(request: Request, control: ControlApi, key: str, template: str,
               context: Mapping[str, Any] | None = None, status: int = 200) -> HTMLResponse:
    """A whole page, headed by who is signed in (WhoAmI: a key control no longer accepts
    ends the session here)."""
    principal = await control.whoami(key)
    return render(request, template, {"user": principal, **(context or {})}, status=status)
