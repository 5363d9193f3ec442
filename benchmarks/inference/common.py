"""What the inference benchmarks share: the machine's description, engine settings, random
adapters of the default base model, a loopback stand-in for control, and timing helpers.

Benchmarks measure and print; nothing here asserts a speed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

import grpc

from benchmarks.machine import describe, load
from benchmarks.results import save
from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.common.errors import NotFound, Unauthenticated
from services.common.interceptors import AuthInterceptor
from services.common.keys import tokens_equal
from services.common.server import GrpcServer, Registration
from services.inference.config import BaseModel, InferenceConfig

SERVICE_TOKEN = "bench-service-token"
API_KEY = "bench-key"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def machine() -> dict:
    """The machine (benchmarks.machine), torch's thread count and the load right now."""
    import torch

    return {**describe(), "torch_threads": torch.get_num_threads(), "load_average": load()}


def base_model() -> BaseModel:
    from services.common.base_models import DEFAULT_BASE_MODEL, ensure_model, load_catalog

    spec = load_catalog()[DEFAULT_BASE_MODEL]
    ensure_model(spec)
    return BaseModel.from_spec(spec)


def engine_config(base: BaseModel, tmp: Path, **overrides) -> InferenceConfig:
    settings = dict(base_model=base, service_token=SERVICE_TOKEN, listen_address="127.0.0.1:0",
                    max_loras=8, max_cpu_loras=8, max_lora_rank=16, max_model_len=2048,
                    gpu_memory_utilization=0.1, kv_cache_gib=1, max_num_seqs=64,
                    max_queued_requests=256, default_max_tokens=64,
                    adapter_cache_dir=tmp / "adapter-cache", state_dir=tmp / "state")
    settings.update(overrides)
    return InferenceConfig(**settings)


def random_adapter(base: BaseModel, out: Path, seed: int, rank: int = 8) -> Path:
    """A peft-layout LoRA adapter with random weights, drawn as peft's init_lora_weights=False
    draws them, from the base model's shapes (no model load: milliseconds per adapter)."""
    import torch
    from safetensors.torch import save_file

    from services.inference.adapters import base_linear_shapes

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(base_linear_shapes(base.path).items()):
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        out_f, in_f = shape
        a = (torch.rand(rank, in_f, generator=generator) * 2 - 1) / in_f ** 0.5
        b = (torch.rand(out_f, rank, generator=generator) * 2 - 1) / rank ** 0.5
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "lora_dropout": 0.0, "target_modules": list(TARGETS), "bias": "none",
        "base_model_name_or_path": str(base.path), "use_dora": False, "use_rslora": False,
        "modules_to_save": None, "fan_in_fan_out": False}))
    return out


@dataclass
class LoopbackControl(internal_pb2_grpc.ModelResolutionServiceServicer):
    """Control's internal API as the inference service uses it: one key, a few models."""

    base: str
    base_path: str
    models: dict = field(default_factory=dict)   # name -> (adapter_uri, adapter_id)
    usage: dict = field(default_factory=dict)

    async def ResolveModel(self, request, context):
        if not tokens_equal(request.api_key, API_KEY):
            raise Unauthenticated("invalid API key")
        if request.model == self.base:
            uri, adapter_id = "", 0
        elif request.model in self.models:
            uri, adapter_id = self.models[request.model]
        else:
            raise NotFound(f"model {request.model} does not exist")
        return internal_pb2.ResolvedModel(
            account_id="acct", user_id="bench", model=request.model, base_model=self.base,
            base_model_path=self.base_path, adapter_uri=uri, adapter_id=adapter_id,
            context_window=2048)

    async def ReportUsage(self, request, context):
        self.usage.setdefault(request.request_id, request)
        return internal_pb2.ReportUsageResponse()


async def _service_token_only(method, token):
    if not tokens_equal(token, SERVICE_TOKEN):
        raise Unauthenticated("service credential required")
    return "inference"


async def start_control(base: BaseModel) -> tuple[LoopbackControl, GrpcServer]:
    fake = LoopbackControl(base=base.name, base_path=str(base.path))
    server = GrpcServer("127.0.0.1:0", [Registration(
        internal_pb2_grpc.add_ModelResolutionServiceServicer_to_server, fake,
        "finetune.control.v1.ModelResolutionService")],
        interceptors=[AuthInterceptor(_service_token_only)])
    await server.start()
    return fake, server


@contextlib.contextmanager
def spawn_environment(**values: str) -> Iterator[None]:
    """Environment variables for an engine started inside the block: vLLM's engine core is a
    spawned process and reads them when it starts. The previous values come back after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def metadata() -> tuple:
    return (("authorization", f"Bearer {API_KEY}"),)


def summary(latencies_s: list[float]) -> dict:
    ordered = sorted(latencies_s)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(ordered[math.ceil(0.9 * len(ordered)) - 1] * 1000, 1),  # nearest rank
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1)}


class Stopwatch:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def write_result(name: str, result: dict) -> Path:
    """Results land in benchmarks/inference/results/<name>.json (and are printed)."""
    out = save(result, Path(__file__).with_name("results") / f"{name}.json")
    print(json.dumps(result, indent=2))
    return out


def grpc_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


@contextlib.asynccontextmanager
async def served_engine(config: InferenceConfig, control_address: str,
                        state: Path) -> AsyncIterator[tuple]:
    """The inference service as it runs in production, in this process: the engine, the
    usage outbox delivering to the loopback control at `control_address`, and
    InferenceService on loopback gRPC. Yields (engine, InferenceService stub); stops all."""
    from finetune.inference.v1 import inference_pb2_grpc
    from services.inference.accounting import GrpcUsageReporter
    from services.inference.adapters import GrpcModelResolver
    from services.inference.engine import VllmEngine
    from services.inference.outbox import OutboxStore, UsageOutbox
    from services.inference.server import build_completions, build_server
    from services.inference.servicer import InferenceServicer

    engine = VllmEngine.start(config)
    channel = grpc.aio.insecure_channel(control_address)
    outbox = UsageOutbox(OutboxStore(state / "outbox.sqlite3"),
                         GrpcUsageReporter(channel, SERVICE_TOKEN))
    outbox.start()
    servicer = InferenceServicer(build_completions(
        config, engine, GrpcModelResolver(channel, SERVICE_TOKEN), outbox))
    server = build_server(config.listen_address, servicer)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as client:
            yield engine, inference_pb2_grpc.InferenceServiceStub(client)
        await outbox.flush(timeout_s=120)
    finally:
        await server.stop(0)
        await outbox.stop(5)
        await channel.close()
        engine.shutdown()
