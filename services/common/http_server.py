"""HTTP beside gRPC: an ASGI app served by uvicorn on the service's own event loop, and the
app that serves only /metrics (control's metrics port)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Awaitable, Callable, Iterator

import uvicorn
from prometheus_client import CollectorRegistry

from services.common.metrics import CONTENT_TYPE, exposition

log = logging.getLogger(__name__)

Asgi = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]],
                Awaitable[None]]


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as HttpServer's host and port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service's own signal handlers stop it (and this server with it), in order.
        yield


class HttpServer:
    """uvicorn as a task on the running loop: no thread, no second loop.

    The socket is bound when the server is made, so a taken port fails the service's start
    and a configured port 0 is known at once (`port`)."""

    def __init__(self, app: Any, host: str, port: int, grace_s: float = 5.0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family)
        self.host = host
        self.port = self._socket.getsockname()[1]
        self._server = _Server(uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=int(max(1, grace_s))))
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]),
                                         name=f"http {self.url}")
        while not self._server.started:
            if self._task.done():
                self._task.result()   # the start failed: raise its error
                raise RuntimeError(f"HTTP server on {self.url} stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, let open responses finish within the grace period, then close."""
        if self._task is None:
            self._socket.close()
            return
        self._server.should_exit = True
        await self._task
        self._task = None


def metrics_app(registry: CollectorRegistry) -> Asgi:
    """An ASGI app answering GET /metrics from `registry` and 404 to anything else."""
    async def app(scope: dict, receive: Callable[[], Awaitable[dict]],
                  send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics" or scope["method"] != "GET":
            await _respond(send, 404, b"not found\n", b"text/plain")
            return
        # Collectors may read a database: off the loop.
        body = await asyncio.to_thread(exposition, registry)
        await _respond(send, 200, body, CONTENT_TYPE.encode())
    return app


async def _respond(send: Callable[[dict], Awaitable[None]], status: int, body: bytes,
                   content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
