"""`python -m services.inference --port 50052 --control 127.0.0.1:50051 --base-model NAME`

Starts the gRPC server NOT_SERVING and the usage outbox (records a previous run left are sent
first), builds the vLLM engine (about 45 s on CPU), flips to SERVING, and on SIGTERM/SIGINT goes
NOT_SERVING, drains in-flight calls, delivers what usage it can, then stops the engine.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc

from services.common.server import configure_logging
from services.inference.accounting import GrpcUsageReporter
from services.inference.adapters import GrpcModelResolver
from services.inference.config import InferenceConfig, parse_config
from services.inference.engine import VllmEngine
from services.inference.outbox import Backoff, OutboxStore, UsageOutbox
from services.inference.server import build_completions, build_server
from services.inference.servicer import InferenceServicer

log = logging.getLogger("services.inference")


async def serve(config: InferenceConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    servicer = InferenceServicer()
    server = build_server(config, servicer)
    await server.start(serving=False)
    log.info("inference listening on %s (NOT_SERVING until the engine is ready)",
             server.address)

    channel = grpc.aio.insecure_channel(config.control_address)
    usage = UsageOutbox(OutboxStore(config.usage_outbox_path),
                        GrpcUsageReporter(channel, config.service_token),
                        Backoff(max_s=config.usage_retry_max_s))
    usage.start()
    engine = None
    try:
        # The engine blocks while it starts; a thread keeps health checks answered meanwhile.
        engine = await asyncio.to_thread(VllmEngine.start, config)
        resolver = GrpcModelResolver(channel, config.service_token,
                                     config.resolution_timeout_s)
        servicer.attach(build_completions(config, engine, resolver, usage), engine.info)
        if not stop.is_set():
            await server.set_serving()
            log.info("inference SERVING %s on %s", config.base_model.name, server.address)
        await stop.wait()
        log.info("stopping: NOT_SERVING, draining for up to %.0f s", config.drain_seconds)
        await server.stop(grace=config.drain_seconds)
    finally:
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
