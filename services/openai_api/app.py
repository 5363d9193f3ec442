"""The OpenAI-compatible HTTP app: its routes, bearer-key auth, request metrics and /metrics.

It runs inside the inference process, beside the gRPC server (services/inference/__main__.py):
completions call the same COMPLETE core as gRPC, everything else calls control's public gRPC
API with the caller's key.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response
from prometheus_client import CollectorRegistry

from services.common.metrics import CONTENT_TYPE, HttpMetrics, exposition
from services.console.app import CONSOLE_PATH, build_console
from services.openai_api import completion_routes, errors, fine_tuning_routes, model_routes
from services.openai_api.context import ApiContext


class RequestMetrics:
    """ASGI middleware timing each request to the end of its response (a stream's last event),
    counted by its route template, so that ids in paths do not multiply the series."""

    def __init__(self, app: Callable, metrics: HttpMetrics):
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self._metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status,
                                  time.perf_counter() - started)


def build_app(ctx: ApiContext, registry: CollectorRegistry | None = None,
              before_scrape: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    """The app; with `registry`, HTTP requests are counted into it and GET /metrics serves
    it (`before_scrape` refreshes sampled values first)."""
    app = FastAPI(title="finetune: OpenAI-compatible API", docs_url=None, redoc_url=None)
    app.state.context = ctx
    errors.install(app)
    for router in (model_routes.router, completion_routes.router, fine_tuning_routes.router):
        app.include_router(router)
    # The web console (services/console): its own pages and error handling, the same context.
    app.mount(CONSOLE_PATH, build_console(ctx))

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)
    if registry is not None:
        app.add_middleware(RequestMetrics, metrics=HttpMetrics(registry))

        @app.get("/metrics", include_in_schema=False)
        async def metrics() -> Response:
            if before_scrape is not None:
                await before_scrape()
            return Response(exposition(registry), media_type=CONTENT_TYPE)
    return app
