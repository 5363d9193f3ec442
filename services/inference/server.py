"""Wiring of the inference service: the gRPC server, its auth, and the COMPLETE core."""

from __future__ import annotations

from finetune.inference.v1 import inference_pb2_grpc
from services.common.errors import Unauthenticated
from services.common.interceptors import AuthInterceptor, MetricsInterceptor
from services.common.metrics import InferenceMetrics, RpcMetrics
from services.common.server import GrpcServer, Registration
from services.inference.accounting import MeteredLedger, UsageLedger
from services.inference.adapters import AdapterRegistry, CachedResolver, ModelResolver
from services.inference.completions import Completions, Limits
from services.inference.config import InferenceConfig
from services.inference.engine import CompletionEngine
from services.inference.servicer import SERVICE_NAME, InferenceServicer


async def require_api_key(method: str, token: str | None) -> str:
    """The caller's key is the principal; control checks it when the model is resolved."""
    if not token:
        raise Unauthenticated("an API key is required (metadata authorization: Bearer <key>)")
    return token


def build_server(address: str, servicer: InferenceServicer,
                 metrics: RpcMetrics | None = None) -> GrpcServer:
    """InferenceService on `address` (an engine's, or the router's) behind the key check."""
    return GrpcServer(
        address,
        [Registration(inference_pb2_grpc.add_InferenceServiceServicer_to_server, servicer,
                      SERVICE_NAME)],
        interceptors=[*([MetricsInterceptor(metrics)] if metrics is not None else []),
                      AuthInterceptor(require_api_key)],
    )


def build_completions(config: InferenceConfig, engine: CompletionEngine,
                      resolver: ModelResolver, usage: UsageLedger,
                      registry: AdapterRegistry | None = None,
                      metrics: InferenceMetrics | None = None) -> Completions:
    """The COMPLETE core both doors (gRPC and the OpenAI-compatible HTTP API) call; with
    `metrics`, the tokens it records and the adapters it validates are counted."""
    registry = registry or AdapterRegistry(config.base_model, config.adapter_rank_limit,
                                           config.adapter_cache_dir, metrics=metrics)
    if metrics is not None:
        usage = MeteredLedger(usage, metrics)
    return Completions(
        engine=engine,
        resolver=CachedResolver(resolver, config.resolution_cache_ttl_s),
        registry=registry,
        usage=usage,
        limits=Limits(default_max_tokens=config.default_max_tokens,
                      max_in_flight=config.max_queued_requests),
    )
