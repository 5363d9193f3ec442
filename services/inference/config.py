"""The inference service's settings: one typed object, built once at start from flags and env."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

from services.common.base_models import DEFAULT_BASE_MODEL, BaseModelSpec, load_catalog

# The ranks vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The grammar backends vLLM can run with compact JSON (StructuredOutputsConfig).
STRUCTURED_OUTPUT_BACKENDS = ("xgrammar", "guidance")
# The OpenAI-compatible HTTP API and /metrics (services.openai_api): a free port unless
# configured, so that processes on one machine never clash (`finetune up` and the deployments
# name theirs); -1 turns them off.
DEFAULT_HTTP_PORT = 0


@dataclass(frozen=True)
class BaseModel:
    """What the inference service needs to know about the one base model it serves."""

    name: str
    path: Path
    context_window: int
    max_lora_rank: int
    target_modules: tuple[str, ...]
    source: str = "path"   # the catalog's: an object-store URL is downloaded into `path` at start

    @classmethod
    def from_spec(cls, spec: BaseModelSpec) -> "BaseModel":
        return cls(name=spec.name, path=spec.path, context_window=spec.context_window,
                   max_lora_rank=spec.max_lora_rank, target_modules=spec.target_modules,
                   source=spec.source)


@dataclass(frozen=True)
class InferenceConfig:
    base_model: BaseModel
    service_token: str
    listen_address: str = "127.0.0.1:50052"
    control_address: str = "127.0.0.1:50051"
    # The OpenAI-compatible HTTP API and /metrics (host:port, port 0 = a free one); "" = off.
    http_address: str = ""
    # Each catalog base model's default learning rate: the unit of the OpenAI API's
    # learning_rate_multiplier.
    default_learning_rates: Mapping[str, float] = field(default_factory=dict)
    # vLLM engine
    max_loras: int = 4                 # adapters in one batch
    max_cpu_loras: int = 16            # adapters kept loaded in memory
    max_lora_rank: int = 64
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.1  # on CPU: the fraction of the NUMA node's memory
    kv_cache_gib: float = 1.0
    max_num_seqs: int = 32
    dtype: str = "auto"                # auto: measured on this machine (engine.engine_dtype)
    precision_cache: Path | None = None   # the precision probe's cache (default ~/.cache/finetune)
    grouped_lora_ops: bool = True      # replace vLLM CPU's per-token LoRA ops (see lora_ops.py)
    structured_output_backend: str = "xgrammar"   # response_format grammars: xgrammar | guidance
    # serving
    # Requests in flight before RESOURCE_EXHAUSTED: two engine batches (max_num_seqs 32). At 32
    # concurrent a 32-token answer took 3.3 s p50 on a 2-core CPU (docs/benchmarks.md,
    # inference (b)), so the last admitted request waits about one batch more; past that a
    # client is better told to retry than queued.
    max_queued_requests: int = 64
    default_max_tokens: int = 256
    resolution_cache_ttl_s: float = 30.0
    resolution_timeout_s: float = 10.0
    adapter_cache_dir: Path = field(
        default_factory=lambda: Path("~/.cache/finetune/adapters").expanduser())
    drain_seconds: float = 30.0
    # accounting: the usage outbox lives here (see outbox.py); keep it on a persistent disk
    state_dir: Path = field(
        default_factory=lambda: Path("~/.local/state/finetune/inference").expanduser())
    usage_flush_seconds: float = 10.0   # at stop: time to deliver what is left
    usage_retry_max_s: float = 30.0     # the longest wait between delivery attempts
    log_level: str = "INFO"

    def __post_init__(self):
        if not self.service_token:
            raise ValueError("the service token is required (env FINETUNE_SERVICE_TOKEN)")
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {VLLM_LORA_RANKS}")
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be >= max_loras")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.max_model_len < 2 or self.max_model_len > self.base_model.context_window:
            raise ValueError(f"max_model_len must be in [2, {self.base_model.context_window}]")
        if not 1 <= self.default_max_tokens < self.max_model_len:
            raise ValueError("default_max_tokens must be in [1, max_model_len)")
        if self.structured_output_backend not in STRUCTURED_OUTPUT_BACKENDS:
            raise ValueError(f"structured_output_backend must be one of "
                             f"{STRUCTURED_OUTPUT_BACKENDS}")
        if self.max_queued_requests < 1:
            raise ValueError("max_queued_requests must be >= 1")
        if self.usage_flush_seconds < 0 or self.usage_retry_max_s <= 0:
            raise ValueError("usage_flush_seconds must be >= 0 and usage_retry_max_s > 0")

    @property
    def adapter_rank_limit(self) -> int:
        """The largest adapter rank this service accepts: the engine's and the catalog's limit."""
        return min(self.max_lora_rank, self.base_model.max_lora_rank)

    @property
    def usage_outbox_path(self) -> Path:
        return self.state_dir / "usage-outbox.sqlite3"


LORA_PATHS = ("kernel", "fused", "per-op")


def requested_lora_path(environ: Mapping[str, str] | None = None) -> str:
    """FINETUNE_LORA_PATH: `kernel` (the default: services/inference/lora_kernel.py), `fused`
    (the fused punica wrapper with torch products) or `per-op` (vLLM's wrapper over the
    grouped ops). The engine's worker reads it when it imports vllm_worker; the service checks
    it at start, so a misspelt value stops the service with this message rather than quietly
    running another path."""
    path = (os.environ if environ is None else environ).get("FINETUNE_LORA_PATH", "kernel")
    if path not in LORA_PATHS:
        raise ValueError(f"FINETUNE_LORA_PATH={path!r}: expected one of {', '.join(LORA_PATHS)}")
    return path


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> InferenceConfig:
    """Build the config from command-line flags, with environment variables as defaults."""
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(prog="python -m services.inference",
                                description="finetune inference service (vLLM, LoRA hot-swap)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50052)
    p.add_argument("--http-host", default=None, help="default: --host")
    p.add_argument("--http-port", type=int,
                   default=int(env.get("FINETUNE_INFERENCE_HTTP_PORT") or DEFAULT_HTTP_PORT),
                   help="the OpenAI-compatible HTTP API and /metrics (0, the default: a free "
                        "port, logged; -1: off; env FINETUNE_INFERENCE_HTTP_PORT)")
    p.add_argument("--control", default=env.get("FINETUNE_CONTROL_ADDRESS", "127.0.0.1:50051"),
                   help="address of the control service (model resolution, usage)")
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="catalog name")
    p.add_argument("--base-model-path", default=None,
                   help="model folder (default: the catalog's path for --base-model)")
    p.add_argument("--catalog", default=None, help="base-model catalog TOML")
    p.add_argument("--max-loras", type=int, default=4)
    p.add_argument("--max-cpu-loras", type=int, default=16)
    p.add_argument("--max-lora-rank", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=None,
                   help="default: the base model's context window")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    p.add_argument("--kv-cache-gib", type=float,
                   default=float(env.get("VLLM_CPU_KVCACHE_SPACE") or 1))
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: the faster of bfloat16 and float32, measured once per machine")
    p.add_argument("--precision-cache", default=env.get("FINETUNE_PRECISION_CACHE"),
                   help="the precision probe's cache file (default ~/.cache/finetune/...)")
    p.add_argument("--no-grouped-lora-ops", action="store_true",
                   help="keep vLLM CPU's own LoRA ops (slow, wrong for mixed batches)")
    p.add_argument("--structured-output-backend", default="xgrammar",
                   choices=STRUCTURED_OUTPUT_BACKENDS,
                   help="grammar engine for response_format JSON schemas")
    p.add_argument("--max-queued-requests", type=int, default=64)
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--resolution-cache-ttl", type=float, default=30.0)
    p.add_argument("--adapter-cache-dir",
                   default=env.get("FINETUNE_ADAPTER_CACHE", "~/.cache/finetune/adapters"))
    p.add_argument("--drain-seconds", type=float, default=30.0)
    p.add_argument("--state-dir",
                   default=env.get("FINETUNE_INFERENCE_STATE_DIR",
                                   "~/.local/state/finetune/inference"),
                   help="durable state (the usage outbox); must survive restarts")
    p.add_argument("--usage-flush-seconds", type=float, default=10.0,
                   help="at stop, how long to try delivering the usage records left")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)

    catalog = load_catalog(args.catalog)
    if args.base_model not in catalog:
        p.error(f"unknown base model {args.base_model!r}; catalog has {sorted(catalog)}")
    base = BaseModel.from_spec(catalog[args.base_model])
    if args.base_model_path:
        base = replace(base, path=Path(args.base_model_path).expanduser())
    if args.http_port < -1:
        p.error("--http-port must be a port, 0 (a free one) or -1 (off)")
    try:
        requested_lora_path(env)
        return InferenceConfig(
            base_model=base,
            service_token=env.get("FINETUNE_SERVICE_TOKEN", ""),
            listen_address=f"{args.host}:{args.port}",
            control_address=args.control,
            http_address="" if args.http_port < 0
            else f"{args.http_host or args.host}:{args.http_port}",
            default_learning_rates=default_learning_rates(catalog),
            max_loras=args.max_loras,
            max_cpu_loras=args.max_cpu_loras,
            max_lora_rank=args.max_lora_rank,
            max_model_len=args.max_model_len or base.context_window,
            gpu_memory_utilization=args.gpu_memory_utilization,
            kv_cache_gib=args.kv_cache_gib,
            max_num_seqs=args.max_num_seqs,
            dtype=args.dtype,
            precision_cache=Path(args.precision_cache).expanduser() if args.precision_cache
            else None,
            grouped_lora_ops=not args.no_grouped_lora_ops,
            structured_output_backend=args.structured_output_backend,
            max_queued_requests=args.max_queued_requests,
            default_max_tokens=args.default_max_tokens,
            resolution_cache_ttl_s=args.resolution_cache_ttl,
            adapter_cache_dir=Path(args.adapter_cache_dir).expanduser(),
            drain_seconds=args.drain_seconds,
            state_dir=Path(args.state_dir).expanduser(),
            usage_flush_seconds=args.usage_flush_seconds,
            log_level=args.log_level,
        )
    except ValueError as exc:
        p.error(str(exc))


def default_learning_rates(catalog: Mapping[str, BaseModelSpec]) -> dict[str, float]:
    """The catalog's default learning rate of each base model that has a numeric one."""
    rates = {}
    for name, spec in catalog.items():
        rate = spec.defaults.get("learning_rate")
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
            rates[name] = float(rate)
    return rates
