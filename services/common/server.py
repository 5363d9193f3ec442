"""gRPC server bootstrap shared by the services: interceptors, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.interceptors import ErrorMappingInterceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class Registration:
    """One servicer: the generated add_*_to_server function, the servicer, its full name."""

    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    service_name: str


class GrpcServer:
    """A grpc.aio server whose health is NOT_SERVING until `set_serving()` and again while it
    stops."""

    def __init__(self, address: str, registrations: Sequence[Registration],
                 interceptors: Iterable[grpc.aio.ServerInterceptor] = ()):
        # Auth runs first, then error mapping around the handler itself.
        self.server = grpc.aio.server(
            interceptors=[*interceptors, ErrorMappingInterceptor()],
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     # gRPC binds with SO_REUSEPORT by default: a port another gRPC server
                     # holds (Ray's agents pick theirs at random) would be shared silently and
                     # half the calls answered UNIMPLEMENTED by the other process. Refuse it.
                     ("grpc.so_reuseport", 0)],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names = [r.service_name for r in registrations]
        for r in registrations:
            r.add(r.servicer, self.server)
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {address}")
        self.host = address.rsplit(":", 1)[0]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, serving: bool = True) -> None:
        await self.server.start()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING if serving
                            else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def set_serving(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)

    async def _set_all(self, status) -> None:
        for name in [*self._names, ""]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Flip health to NOT_SERVING first so balancers drain us, then stop with a grace period."""
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


async def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
