"""`python -m services.inference --port 50052 --control 127.0.0.1:50051 --base-model NAME`

Starts the gRPC server NOT_SERVING, the HTTP server (the OpenAI-compatible API, answering 503
until the engine is ready, and /metrics) and the usage outbox (records a previous run left are
sent first), builds the vLLM engine (about 45 s on CPU), flips to SERVING, and on SIGTERM/SIGINT
goes NOT_SERVING, drains in-flight calls on both doors, delivers what usage it can, then stops
the engine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc

from services.common.base_models import ensure_folder
from services.common.http_server import HttpServer, split_address
from services.common.metrics import InferenceMetrics, RpcMetrics, new_registry
from services.common.server import configure_logging
from services.inference.accounting import GrpcUsageReporter
from services.inference.adapters import AdapterResidency, GrpcModelResolver
from services.inference.config import InferenceConfig, parse_config
from services.inference.engine import VllmEngine
from services.inference.outbox import Backoff, OutboxStore, UsageOutbox
from services.inference.server import build_completions, build_server
from services.inference.servicer import InferenceServicer
from services.openai_api.app import build_app
from services.openai_api.context import ApiContext
from services.openai_api.control import GrpcControl

log = logging.getLogger("services.inference")

ADAPTER_SAMPLE_S = 5.0   # how often the engine's resident adapters are compared (evictions)


async def serve(config: InferenceConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    registry = new_registry()
    metrics = InferenceMetrics(registry)
    channel = grpc.aio.insecure_channel(config.control_address)
    residency: AdapterResidency | None = None

    async def before_scrape() -> None:
        if residency is not None:
            await residency.sample()

    servicer = InferenceServicer()
    server = build_server(config.listen_address, servicer, RpcMetrics(registry))
    api = ApiContext(GrpcControl(channel), config.default_learning_rates)
    http = None
    if config.http_address:
        http = HttpServer(build_app(api, registry, before_scrape),
                          *split_address(config.http_address), grace_s=config.drain_seconds)
    await server.start(serving=False)
    log.info("inference listening on %s (NOT_SERVING until the engine is ready)",
             server.address)
    if http is not None:
        await http.start()
        log.info("OpenAI-compatible API on %s/v1, metrics on %s/metrics", http.url, http.url)

    usage = UsageOutbox(OutboxStore(config.usage_outbox_path),
                        GrpcUsageReporter(channel, config.service_token),
                        Backoff(max_s=config.usage_retry_max_s))
    usage.start()
    engine = None
    sampling = None
    try:
        base = config.base_model
        # A base model whose catalog source is an object store is downloaded once per node.
        await asyncio.to_thread(ensure_folder, base.name, base.source, base.path)
        # The engine blocks while it starts; a thread keeps health checks answered meanwhile.
        engine = await asyncio.to_thread(VllmEngine.start, config)
        resolver = GrpcModelResolver(channel, config.service_token,
                                     config.resolution_timeout_s)
        completions = build_completions(config, engine, resolver, usage, metrics=metrics)
        servicer.attach(completions, engine.info)
        api.completions = completions
        metrics.watch_requests(lambda: completions.in_flight, engine.num_unfinished_requests)
        residency = AdapterResidency(engine.loaded_adapters, metrics)
        sampling = asyncio.create_task(residency.run(ADAPTER_SAMPLE_S), name="adapter sampling")
        if not stop.is_set():
            await server.set_serving()
            log.info("inference SERVING %s on %s", config.base_model.name, server.address)
        await stop.wait()
        log.info("stopping: NOT_SERVING, draining for up to %.0f s", config.drain_seconds)
        await asyncio.gather(server.stop(grace=config.drain_seconds),
                             *([http.stop()] if http is not None else []))
        http = None
    finally:
        if sampling is not None:
            sampling.cancel()
        if http is not None:
            await http.stop()
        await usage.stop(config.usage_flush_seconds)
        await channel.close()
        if engine is not None:
            engine.shutdown()
    log.info("inference stopped")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_level)
    asyncio.run(serve(config))
    return 0


if __name__ == "__main__":  # the engine core is a spawned process: it re-imports this module
    sys.exit(main())
