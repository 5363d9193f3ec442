"""Fakes behind the inference service's Protocols: no vLLM, no control, no network."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from services.common.errors import NotFound
from services.inference.adapters import AdapterRegistry, CachedResolver, ResolvedModel
from services.inference.completions import Completions, Limits
from services.inference.config import BaseModel
from services.inference.engine import GenerationDelta
from services.inference.outbox import OutboxStore, UsageOutbox

BASE = BaseModel(name="tiny", path=Path("/nonexistent/tiny"), context_window=64,
                 max_lora_rank=16, target_modules=("q_proj", "down_proj"))
# The fake base model's weights: a 16-wide model with one attention and one MLP projection.
BASE_SHAPES = {
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.mlp.down_proj.weight": (16, 32),
    "model.embed_tokens.weight": (100, 16),
}


class FakeTokenizer:
    """Whitespace tokenizer without a chat template: ids are word positions in a vocabulary."""

    chat_template = None

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab) + 10) for w in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


class FakeEngine:
    """Answers with `reply` word by word; `gate` (when set) holds generation until released,
    from word `hold_after` on."""

    def __init__(self, reply="the quick brown fox", max_model_len=64):
        self.tokenizer = FakeTokenizer()
        self.max_model_len = max_model_len
        self.reply = reply.split()
        self.calls: list[dict] = []
        self.aborted: list[str] = []
        self.gate: asyncio.Event | None = None
        self.hold_after = 0   # the gate holds the words from this one on
        self.started = asyncio.Event()
        self.finish_reason_override: str | None = None

    async def generate(self, request_id, prompt_token_ids, sampling, lora):
        self.calls.append(dict(request_id=request_id, ids=list(prompt_token_ids),
                               sampling=sampling, lora=lora))
        self.started.set()
        words = self.reply[: sampling.max_tokens]
        for i, word in enumerate(words):
            if self.gate is not None and i >= self.hold_after:
                await self.gate.wait()
            last = i == len(words) - 1
            reason = None
            if last:
                reason = self.finish_reason_override or (
                    "length" if len(words) == sampling.max_tokens else "stop")
            yield GenerationDelta(text=("" if i == 0 else " ") + word,
                                  token_ids=(100 + i,), prompt_token_count=len(prompt_token_ids),
                                  finish_reason=reason)

    async def abort(self, request_id):
        self.aborted.append(request_id)


class FakeResolver:
    def __init__(self, models: dict[str, ResolvedModel] | None = None):
        self.models = dict(models or {})
        self.calls: list[tuple[str, str]] = []

    async def resolve(self, api_key, model, on_behalf_of=""):
        self.calls.append((api_key, model) + ((on_behalf_of,) if on_behalf_of else ()))
        if model not in self.models:
            raise NotFound(f"model {model} does not exist or is not authorized")
        return self.models[model]


class RecordingReporter:
    """Control's ReportUsage as the outbox sees it: `fail` makes it unreachable, `reject`
    refuses records for good; every call is noted in `calls`."""

    def __init__(self, fail=False):
        self.records = []
        self.calls = []
        self.fail = fail
        self.reject = False

    async def report(self, record):
        from services.inference.accounting import UsageRejected

        self.calls.append(record)
        if self.fail:
            raise ConnectionError("control is down")
        if self.reject:
            raise UsageRejected("NOT_FOUND: account acct does not exist")
        self.records.append(record)


def write_adapter(folder: Path, rank=4, targets=("q_proj", "down_proj"), config_extra=None,
                  tensors=None) -> Path:
    """A small peft-layout LoRA adapter for the fake base model."""
    folder.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        tensors = {}
        for name in targets:
            key = ("model.layers.0.self_attn." if name == "q_proj" else "model.layers.0.mlp.") + name
            out_f, in_f = BASE_SHAPES[key + ".weight"]
            prefix = "base_model.model." + key
            tensors[prefix + ".lora_A.weight"] = torch.randn(rank, in_f)
            tensors[prefix + ".lora_B.weight"] = torch.randn(out_f, rank)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": list(targets), "base_model_name_or_path": "/models/tiny",
              "bias": "none", "use_dora": False, "modules_to_save": None}
    config.update(config_extra or {})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def base_resolution(model="tiny", **kw) -> ResolvedModel:
    return ResolvedModel(model=model, base_model="tiny", account_id="acct", user_id="u1", **kw)


def adapter_resolution(model, folder: Path, adapter_id: int, **kw) -> ResolvedModel:
    return ResolvedModel(model=model, base_model="tiny", account_id="acct", user_id="u1",
                         adapter_uri=folder.as_uri(), adapter_id=adapter_id, **kw)


@pytest.fixture
def registry(tmp_path):
    return AdapterRegistry(BASE, max_rank=16, cache_dir=tmp_path / "adapter-cache",
                           base_shapes=lambda: BASE_SHAPES)


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def resolver():
    return FakeResolver({"tiny": base_resolution()})


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def usage(reporter, tmp_path):
    """The real outbox on a temporary SQLite file; tests call flush() to deliver."""
    outbox = UsageOutbox(OutboxStore(tmp_path / "outbox.sqlite3"), reporter)
    yield outbox
    outbox.store.close()


@pytest.fixture
def make_completions(engine, resolver, registry, usage):
    def make(max_in_flight=8, default_max_tokens=16, ttl=0.0):
        return Completions(engine, CachedResolver(resolver, ttl), registry, usage,
                           Limits(default_max_tokens=default_max_tokens,
                                  max_in_flight=max_in_flight))
    return make


@pytest.fixture
def fakes():
    """The fake classes and helpers, for tests that build their own."""
    import types
    return types.SimpleNamespace(FakeEngine=FakeEngine, FakeResolver=FakeResolver,
                                 RecordingReporter=RecordingReporter, write_adapter=write_adapter,
                                 base_resolution=base_resolution,
                                 adapter_resolution=adapter_resolution, BASE=BASE,
                                 BASE_SHAPES=BASE_SHAPES)
