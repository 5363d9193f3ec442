"""The console as an ASGI app of its own, mounted at /console by the HTTP app
(services/openai_api/app.py): its own error pages (HTML, not the API's JSON), its static
files, and headers that keep its pages from being framed or fed scripts from elsewhere."""

from __future__ import annotations

from typing import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from services.console import (
    errors,
    job_routes,
    model_routes,
    playground_routes,
    session_routes,
)
from services.console.rendering import STATIC_DIR, base_path
from services.openai_api.context import ApiContext

CONSOLE_PATH = "/console"
# Scripts and styles from the console's own static files only (the vendored htmx and uPlot);
# inline styles for the ones htmx and uPlot set.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def build_console(ctx: ApiContext) -> FastAPI:
    console = FastAPI(title="finetune console", docs_url=None, redoc_url=None,
                      openapi_url=None)
    console.state.context = ctx
    errors.install(console)
    for router in (session_routes.router, job_routes.router, model_routes.router,
                   playground_routes.router):
        console.include_router(router)
    console.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @console.middleware("http")
    async def security_headers(request: Request,
                               call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if "cache-control" not in response.headers and \
                not request.url.path.startswith(f"{base_path(request)}/static/"):
            response.headers["cache-control"] = "no-store"   # pages show one user's data
        return response
    return console
