"""One real vLLM engine per session on the default base model, real LoRA adapters made with peft,
a small real ModelResolutionService (control's internal API) on loopback, and the real
inference gRPC server in front of the engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from dataclasses import dataclass, field

import grpc
import pytest

from finetune.control.v1 import internal_pb2, internal_pb2_grpc
from services.common.errors import NotFound, PermissionDenied, Unauthenticated
from services.common.interceptors import AuthInterceptor
from services.common.keys import tokens_equal
from services.common.server import GrpcServer, Registration
from services.inference.accounting import GrpcUsageReporter
from services.inference.adapters import GrpcModelResolver
from services.inference.config import BaseModel, InferenceConfig
from services.inference.engine import VllmEngine
from services.inference.outbox import OutboxStore, UsageOutbox
from services.inference.server import build_completions, build_server
from services.inference.servicer import InferenceServicer

SERVICE_TOKEN = "svc-token-for-tests"
KEYS = {"key-alice": "alice", "key-bob": "bob", "key-carol": "carol"}
MODEL_A = "db.public.model_a"
MODEL_B = "db.public.model_b"
BROKEN = "db.public.broken"


def make_peft_adapter(base_path, out, seed: int, rank: int = 8):
    """A real peft LoRA adapter with random (non-zero) weights, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    return out


def make_random_adapter(base_path, out, seed: int, rank: int = 8,
                        targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj")):
    """A LoRA adapter in peft's layout without loading the model: random weights drawn as peft's
    init_lora_weights=False draws them (nn.Linear's default init), from the base's shapes."""
    import torch
    from safetensors.torch import save_file

    from services.inference.adapters import base_linear_shapes

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in sorted(base_linear_shapes(base_path).items()):
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] not in targets:
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
        "lora_dropout": 0.0, "target_modules": list(targets), "bias": "none",
        "base_model_name_or_path": str(base_path), "use_dora": False, "use_rslora": False,
        "modules_to_save": None, "fan_in_fan_out": False}))
    return out


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory, base_model_spec):
    root = tmp_path_factory.mktemp("artifacts")
    a = make_peft_adapter(base_model_spec.path, root / "jobs/ft_a/output", seed=1)
    b = make_peft_adapter(base_model_spec.path, root / "jobs/ft_b/output", seed=2)
    broken = root / "jobs/ft_broken/output"
    shutil.copytree(a, broken)
    (broken / "adapter_model.bin").write_bytes(b"\x80\x04 a pickle")
    return {"a": a, "b": b, "broken": broken}


@pytest.fixture(scope="session")
def random_adapter(tmp_path_factory, base_model_spec):
    """Makes a random adapter of the default base model: random_adapter(seed) -> folder."""
    root = tmp_path_factory.mktemp("random-adapters")

    def make(seed: int, rank: int = 8):
        return make_random_adapter(base_model_spec.path, root / f"ft_{seed}" / "output", seed,
                                   rank)
    return make


@pytest.fixture(scope="session")
def names():
    """The model names the fake control knows, for the tests."""
    import types
    return types.SimpleNamespace(MODEL_A=MODEL_A, MODEL_B=MODEL_B, BROKEN=BROKEN,
                                 SERVICE_TOKEN=SERVICE_TOKEN, TWIN=TWIN, GHOST=GHOST,
                                 TWIN_MODEL=TWIN_MODEL, GHOST_MODEL=GHOST_MODEL)


@dataclass
class FakeControl(internal_pb2_grpc.ModelResolutionServiceServicer):
    """Control's internal model resolution: keys, USAGE grants and adapter versions."""

    base: str
    base_path: str
    # name -> (adapter_uri, adapter_id, users[, base model: default `base`])
    models: dict = field(default_factory=dict)
    other_bases: tuple = ()         # more base models it knows (the router's tests)
    # ReportUsage as control does it: one row per request_id (the first one wins)
    usage: dict = field(default_factory=dict)
    usage_calls: list = field(default_factory=list)   # every call, duplicates included
    usage_down: bool = False        # answer UNAVAILABLE without storing (control is down)
    usage_lose_acks: int = 0        # store, then fail this many calls (the answer is lost)
    closed_accounts: set = field(default_factory=set)   # usage for these: NOT_FOUND
    resolve_calls: int = 0

    async def ResolveModel(self, request, context):
        self.resolve_calls += 1
        user = KEYS.get(request.api_key)
        if user is None:
            raise Unauthenticated("invalid API key")
        base = self.base
        if request.model == self.base or request.model in self.other_bases:
            uri, adapter_id, base = "", 0, request.model
        elif request.model in self.models:
            uri, adapter_id, users, *rest = self.models[request.model]
            base = rest[0] if rest else base
            if user not in users:
                raise PermissionDenied(f"USAGE on model {request.model} is required")
        else:
            raise NotFound(f"model {request.model} does not exist or is not authorized")
        return internal_pb2.ResolvedModel(
            account_id="acct-1", user_id=user, model=request.model, base_model=base,
            base_model_path=self.base_path, adapter_uri=uri, adapter_id=adapter_id,
            context_window=2048)

    async def ReportUsage(self, request, context):
        self.usage_calls.append(request)
        if self.usage_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "control is restarting")
        if request.account_id in self.closed_accounts:
            raise NotFound(f"account {request.account_id} does not exist")
        self.usage.setdefault(request.request_id, request)
        if self.usage_lose_acks > 0:
            self.usage_lose_acks -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return internal_pb2.ReportUsageResponse()

    def rows_of(self, user: str) -> dict:
        return {rid: u for rid, u in self.usage.items() if u.user_id == user}


async def _service_token_only(method, token):
    if not tokens_equal(token, SERVICE_TOKEN):
        raise Unauthenticated("service credential required")
    return "inference"


async def serve_fake_control(fake: FakeControl):
    """Starts `fake` on a free loopback port; returns the server (fake.address is set)."""
    server = GrpcServer("127.0.0.1:0", [Registration(
        internal_pb2_grpc.add_ModelResolutionServiceServicer_to_server, fake,
        "finetune.control.v1.ModelResolutionService")],
        interceptors=[AuthInterceptor(_service_token_only)])
    await server.start()
    fake.address = server.address
    return server


@pytest.fixture(scope="session")
async def control(base_model_spec, adapter_dirs):
    fake = FakeControl(base=base_model_spec.name, base_path=str(base_model_spec.path))
    fake.models = {
        MODEL_A: (adapter_dirs["a"].as_uri(), 101, {"alice"}),
        MODEL_B: (adapter_dirs["b"].as_uri(), 102, {"alice", "bob", "carol"}),
        BROKEN: (adapter_dirs["broken"].as_uri(), 103, {"alice"}),
    }
    server = await serve_fake_control(fake)
    yield fake
    await server.stop(0)


# The router's tests: a second base model (the default model's folder under another name), a base
# model control knows that no engine serves, and a fine-tuned model on each.
TWIN = "smollm2-twin"
GHOST = "ghost-base"
TWIN_MODEL = "db.public.twin_model"
GHOST_MODEL = "db.public.ghost_model"


@pytest.fixture(scope="session")
async def router_control(base_model_spec, adapter_dirs):
    """A FakeControl of its own that knows two more base models and a model on each."""
    fake = FakeControl(base=base_model_spec.name, base_path=str(base_model_spec.path),
                       other_bases=(TWIN, GHOST))
    fake.models = {
        MODEL_A: (adapter_dirs["a"].as_uri(), 101, {"alice"}),
        TWIN_MODEL: (adapter_dirs["b"].as_uri(), 201, {"alice", "bob"}, TWIN),
        GHOST_MODEL: (adapter_dirs["b"].as_uri(), 301, {"alice"}, GHOST),
    }
    server = await serve_fake_control(fake)
    yield fake
    await server.stop(0)


@pytest.fixture
async def usage_control():
    """A FakeControl of its own, for tests of usage delivery alone (no model, no engine)."""
    fake = FakeControl(base="none", base_path="")
    server = await serve_fake_control(fake)
    yield fake
    await server.stop(0)


def make_config(base_model_spec, tmp_path_factory, **overrides) -> InferenceConfig:
    settings = dict(
        base_model=BaseModel.from_spec(base_model_spec), service_token=SERVICE_TOKEN,
        listen_address="127.0.0.1:0", max_loras=2, max_cpu_loras=3, max_lora_rank=16,
        max_model_len=2048, gpu_memory_utilization=0.1, kv_cache_gib=1, max_num_seqs=16,
        max_queued_requests=16, default_max_tokens=32, resolution_cache_ttl_s=30,
        adapter_cache_dir=tmp_path_factory.mktemp("adapter-cache"))
    settings.update(overrides)
    return InferenceConfig(**settings)


class RecordingEngine(VllmEngine):
    """The real engine, noting each abort and how many requests vLLM still held after it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aborts: list[tuple[str, int]] = []
        self.aborted = asyncio.Event()

    async def abort(self, request_id):
        await super().abort(request_id)
        self.aborts.append((request_id, self.num_unfinished_requests()))
        self.aborted.set()


@pytest.fixture(scope="session")
def engine(base_model_spec, tmp_path_factory):
    # float32: this CPU's bf16 matrix products are not batch-invariant (a base-only batch can
    # already change a greedy answer late in the text), which would blur the mixed-batch test.
    engine = RecordingEngine.start(make_config(base_model_spec, tmp_path_factory,
                                               dtype="float32"))
    yield engine
    engine.shutdown()


@dataclass
class Inference:
    address: str
    server: GrpcServer
    usage: UsageOutbox
    engine: RecordingEngine
    control: FakeControl

    def channel(self, key: str | None = "key-alice"):
        return grpc.aio.insecure_channel(self.address)

    @staticmethod
    def metadata(key: str | None = "key-alice"):
        return (("authorization", f"Bearer {key}"),) if key else ()


@contextlib.asynccontextmanager
async def serving(engine, control_address: str, config: InferenceConfig, state_dir):
    """The real inference gRPC server in front of `engine`, resolving models and reporting
    usage through the control service at `control_address` (a fake or the real one):
    yields (server, usage outbox)."""
    channel = grpc.aio.insecure_channel(control_address)
    usage = UsageOutbox(OutboxStore(state_dir / "usage-outbox.sqlite3"),
                        GrpcUsageReporter(channel, SERVICE_TOKEN))
    usage.start()
    servicer = InferenceServicer()
    server = build_server(config.listen_address, servicer)
    await server.start(serving=False)
    servicer.attach(build_completions(config, engine, GrpcModelResolver(channel, SERVICE_TOKEN),
                                      usage), engine.info)
    await server.set_serving()
    try:
        yield server, usage
    finally:
        await server.stop(0)
        await usage.stop()
        await channel.close()


@pytest.fixture(scope="session")
def serve_inference(engine, base_model_spec, tmp_path_factory):
    """serve_inference(control_address) -> an async context of (server, usage outbox): the
    shared engine behind another inference server, for a control of the test's own."""
    def start(control_address: str):
        return serving(engine, control_address, make_config(base_model_spec, tmp_path_factory),
                       tmp_path_factory.mktemp("state"))
    return start


@pytest.fixture(scope="session")
async def inference(engine, control, serve_inference):
    async with serve_inference(control.address) as (server, usage):
        yield Inference(server.address, server, usage, engine, control)
