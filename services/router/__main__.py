"""`python -m services.router --port 50060 --control 127.0.0.1:50051 --engine NAME=HOST:PORT ...`

Serves InferenceService and the OpenAI-compatible API (with /metrics) at one address for every
base model named with --engine, and on SIGTERM/SIGINT goes NOT_SERVING and drains the calls in
flight before it stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc

from services.common.http_server import HttpServer, split_address
from services.common.metrics import RpcMetrics, new_registry
from services.common.server import configure_logging
from services.inference.adapters import CachedResolver, GrpcModelResolver
from services.inference.server import build_server
from services.openai_api.app import build_app
from services.openai_api.context import ApiContext
from services.openai_api.control import GrpcControl
from services.router.config import RouterConfig, parse_config
from services.router.routing import Engines, RoutedCompletions
from services.router.servicer import RouterServicer

log = logging.getLogger("services.router")


async def serve(config: RouterConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    registry = new_registry()
    control = grpc.aio.insecure_channel(config.control_address)
    engines = Engines(config.engines)
    resolver = CachedResolver(GrpcModelResolver(control, config.service_token,
                                                config.resolution_timeout_s),
                              config.resolution_cache_ttl_s)
    routes = RoutedCompletions(resolver, engines, config.timeout_s)
    server = build_server(config.listen_address, RouterServicer(routes), RpcMetrics(registry))
    http = None
    if config.http_address:
        api = ApiContext(GrpcControl(control), config.default_learning_rates, routes)
        http = HttpServer(build_app(api, registry), *split_address(config.http_address),
                          grace_s=config.drain_seconds)
    await server.start()
    if http is not None:
        await http.start()
        log.info("OpenAI-compatible API on %s/v1, metrics on %s/metrics", http.url, http.url)
    log.info("router SERVING on %s for %s", server.address,
             ", ".join(f"{name} at {address}" for name, address in engines.addresses.items()))
    try:
        await stop.wait()
        log.info("stopping: NOT_SERVING, draining for up to %.0f s", config.drain_seconds)
        await asyncio.gather(server.stop(grace=config.drain_seconds),
                             *([http.stop()] if http is not None else []))
    finally:
        await engines.close()
        await control.close()
    log.info("router stopped")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_level)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
