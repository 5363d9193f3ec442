"""The router's settings, from flags over environment variables."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from services.common.base_models import load_catalog
from services.inference.config import default_learning_rates
from services.router.routing import parse_engines

DEFAULT_PORT = 50060


@dataclass(frozen=True)
class RouterConfig:
    engines: Mapping[str, str]         # base model -> the address of its engine
    service_token: str                 # for model resolution at control
    listen_address: str = f"127.0.0.1:{DEFAULT_PORT}"
    control_address: str = "127.0.0.1:50051"
    http_address: str = ""             # the OpenAI-compatible API and /metrics; "" = off
    default_learning_rates: Mapping[str, float] = field(default_factory=dict)
    resolution_cache_ttl_s: float = 30.0
    resolution_timeout_s: float = 10.0
    timeout_s: float = 600.0           # the longest a forwarded call may take
    drain_seconds: float = 30.0
    log_level: str = "INFO"

    def __post_init__(self):
        if not self.service_token:
            raise ValueError("the service token is required (env FINETUNE_SERVICE_TOKEN)")
        if self.timeout_s <= 0 or self.resolution_cache_ttl_s < 0:
            raise ValueError("--timeout must be > 0 and --resolution-cache-ttl >= 0")


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> RouterConfig:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="python -m services.router",
        description="finetune router: one address for the inference engines of several base "
                    "models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--http-host", default=None, help="default: --host")
    p.add_argument("--http-port", type=int,
                   default=int(env.get("FINETUNE_ROUTER_HTTP_PORT") or 0),
                   help="the OpenAI-compatible HTTP API and /metrics (0, the default: a free "
                        "port, logged; -1: off; env FINETUNE_ROUTER_HTTP_PORT)")
    p.add_argument("--control", default=env.get("FINETUNE_CONTROL_ADDRESS", "127.0.0.1:50051"),
                   help="address of the control service (model resolution)")
    p.add_argument("--engine", action="append", default=[],
                   help="base_model=host:port of an engine, once per base model (env "
                        "FINETUNE_ROUTER_ENGINES: the same pairs, comma-separated)")
    p.add_argument("--catalog", default=None,
                   help="base-model catalog TOML (default learning rates of the OpenAI API)")
    p.add_argument("--resolution-cache-ttl", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a forwarded call may take")
    p.add_argument("--drain-seconds", type=float, default=30.0)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if args.http_port < -1:
        p.error("--http-port must be a port, 0 (a free one) or -1 (off)")
    try:
        engines = parse_engines(args.engine or [env.get("FINETUNE_ROUTER_ENGINES", "")])
        return RouterConfig(
            engines=engines,
            service_token=env.get("FINETUNE_SERVICE_TOKEN", ""),
            listen_address=f"{args.host}:{args.port}",
            control_address=args.control,
            http_address="" if args.http_port < 0
            else f"{args.http_host or args.host}:{args.http_port}",
            default_learning_rates=default_learning_rates(load_catalog(args.catalog)),
            resolution_cache_ttl_s=args.resolution_cache_ttl,
            timeout_s=args.timeout,
            drain_seconds=args.drain_seconds,
            log_level=args.log_level,
        )
    except ValueError as exc:
        p.error(str(exc))
