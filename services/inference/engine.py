"""The generation engine behind a small Protocol, and its vLLM (AsyncLLM) implementation.

The rest of the service depends only on `CompletionEngine`, so unit tests use a fake. vLLM is
imported lazily inside `VllmEngine.start`: importing this module never loads vLLM.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncGenerator, Mapping, Protocol

from services.common import precision
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    from services.inference.config import InferenceConfig

log = logging.getLogger(__name__)

GiB = 1 << 30


VLLM_DTYPES = {precision.FP32: "float32", precision.BF16: "bfloat16"}


@dataclass(frozen=True)
class EngineInfo:
    """What a client may read about the engine (InferenceService.GetEngine)."""

    base_model: str
    dtype: str                   # what vLLM computes in
    precision: precision.Choice  # how that was decided, with the probe's figures
    max_model_len: int
    max_loras: int


def engine_dtype(requested: str, model_path: str, compute_threads: int,
                 cache: precision.ProbeCache | None = None) -> tuple[str, precision.Choice]:
    """The dtype vLLM runs in. `auto` on a CPU is measured (services.common.precision: the
    products of a prefill and a decode step, with the engine's thread count); on a GPU it is
    the model's own dtype. Imports vLLM."""
    from vllm.platforms import current_platform

    if requested != "auto":
        return requested, precision.Choice(requested, precision.SERVING, "requested")
    if not current_platform.is_cpu():
        return requested, precision.Choice(requested, precision.SERVING, "platform")
    choice = precision.choose_serving(model_path, compute_threads, cache)
    dtype = VLLM_DTYPES[choice.dtype]
    log.info("serving in %s: %s", dtype, choice.summary())
    return dtype, choice


def configured_dtype(config: "InferenceConfig") -> tuple[str, precision.Choice]:
    """`engine_dtype` for a service's configuration."""
    return engine_dtype(config.dtype, str(config.base_model.path),
                        cpu_compute_threads(os.environ),
                        precision.ProbeCache(config.precision_cache))


# vLLM CPU keeps one core out of its computation by default, for the serving process. Here
# that process is light (gRPC, tokenizing, the usage outbox: ~4 ms of CPU per request), and on
# a 2-core machine computing on both cores served 1.4x the base model's and 1.1-1.2x an
# adapter's output tokens through gRPC at 32 concurrent (docs/benchmarks.md, inference (h)).
# An operator's own VLLM_CPU_NUM_OF_RESERVED_CPU still wins.
RESERVED_CPUS_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
DEFAULT_RESERVED_CPUS = "0"


def cpu_compute_threads(environ: Mapping[str, str]) -> int:
    """The cores vLLM CPU computes on: those this process may use, less the ones it reserves
    (VLLM_CPU_NUM_OF_RESERVED_CPU; none unless the operator says so)."""
    cores = len(os.sched_getaffinity(0))
    reserved = int(environ.get(RESERVED_CPUS_ENV) or DEFAULT_RESERVED_CPUS)
    return max(1, cores - reserved)


GROUPED_LORA_OPS_EXTENSION = "services.inference.vllm_worker.GroupedLoraOpsExtension"


def engine_arguments(config: "InferenceConfig", dtype: str, on_cpu: bool) -> dict[str, Any]:
    """vLLM's AsyncEngineArgs for this service, but the structured-output config (which needs
    vLLM imported). Pure, so both platforms' settings are unit-tested on any machine.

    Both: LoRA on with the configured slots, ranks and sequence limits, and an explicit KV
    cache size (what VLLM_CPU_KVCACHE_SPACE sets on CPU; on a GPU it caps the cache instead of
    taking a share of whatever memory is free beside the trainer). CPU: eager mode (there are
    no CUDA graphs) and the grouped LoRA ops, installed in every worker process before the
    model loads (lora_ops.py: vLLM CPU's per-token ops). GPU: CUDA graphs (enforce_eager off)
    and vLLM's own LoRA kernels, so no worker extension."""
    return {
        "model": str(config.base_model.path),
        "served_model_name": [config.base_model.name],
        "enable_lora": True,
        "max_loras": config.max_loras,
        "max_cpu_loras": config.max_cpu_loras,
        "max_lora_rank": config.max_lora_rank,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "dtype": dtype,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "kv_cache_memory_bytes": int(config.kv_cache_gib * GiB),
        "enforce_eager": on_cpu,
        "disable_log_stats": True,
        "worker_extension_cls": GROUPED_LORA_OPS_EXTENSION
        if on_cpu and config.grouped_lora_ops else "",
    }


@dataclass(frozen=True)
class Sampling:
    """Validated sampling settings of one request (see completions.parse_sampling)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: str | None = None   # constrain the output to JSON valid against this schema
    choices: tuple[str, ...] = ()    # or to exactly one of these strings


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter version as the engine loads it: a name and an id that are never reused."""

    name: str
    int_id: int
    path: str


@dataclass(frozen=True)
class GenerationDelta:
    """What one engine step added to a request's output."""

    text: str                      # new text since the previous delta
    token_ids: tuple[int, ...]     # new output token ids
    prompt_token_count: int        # the prompt tokens the engine actually saw
    finish_reason: str | None = None   # set on the last delta: stop | length | abort | ...


class CompletionEngine(Protocol):
    """Generation from token ids, with an optional LoRA adapter, abortable by request id."""

    @property
    def tokenizer(self) -> Any: ...

    @property
    def max_model_len(self) -> int: ...

    def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling,
                 lora: LoraAdapter | None) -> AsyncGenerator[GenerationDelta, None]: ...

    async def abort(self, request_id: str) -> None: ...


class VllmEngine:
    """CompletionEngine on vLLM's AsyncLLM with LoRA enabled (adapters swapped per request)."""

    def __init__(self, llm: Any, info: EngineInfo):
        self._llm = llm
        self.info = info
        self._max_model_len = llm.model_config.max_model_len
        self._tokenizer = llm.get_tokenizer()  # thread-safe pool of the base model's tokenizer
        self._lora_requests: dict[int, Any] = {}

    @classmethod
    def start(cls, config: "InferenceConfig") -> "VllmEngine":
        """Build the engine (blocks for tens of seconds on a CPU; the engine core is a spawned
        process)."""
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        if current_platform.is_cpu():   # read by the engine core, a process spawned below
            os.environ.setdefault(RESERVED_CPUS_ENV, DEFAULT_RESERVED_CPUS)
        dtype, choice = configured_dtype(config)
        info = EngineInfo(config.base_model.name, dtype, choice, config.max_model_len,
                          config.max_loras)
        kwargs = engine_arguments(config, dtype, on_cpu=current_platform.is_cpu())
        # Compact JSON for response formats: with free whitespace between tokens a weak (or
        # freshly fine-tuned) model can emit newlines until max_tokens and never close the
        # document. vLLM allows this only with a named backend, not "auto".
        args = AsyncEngineArgs(**kwargs, structured_outputs_config=StructuredOutputsConfig(
            backend=config.structured_output_backend,  # type: ignore[arg-type]  # config's
            disable_any_whitespace=True))
        # No local name for the engine: something in vLLM's start-up keeps this frame alive, and
        # a local would keep the engine past shutdown() to interpreter exit, where its __del__
        # fails noisily.
        return cls(AsyncLLM.from_engine_args(args), info)

    @property
    def async_llm(self) -> Any:
        """vLLM's AsyncLLM itself, for benchmarks and diagnostics (the service never needs it)."""
        return self._llm

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    def num_unfinished_requests(self) -> int:
        return self._llm.get_num_unfinished_requests()

    def _lora_request(self, lora: LoraAdapter | None):
        if lora is None:
            return None
        request = self._lora_requests.get(lora.int_id)
        if request is None:
            from vllm.lora.request import LoRARequest

            request = LoRARequest(lora_name=lora.name, lora_int_id=lora.int_id,
                                  lora_path=lora.path)
            self._lora_requests[lora.int_id] = request
        return request

    async def generate(self, request_id: str, prompt_token_ids: list[int], sampling: Sampling,
                       lora: LoraAdapter | None) -> AsyncGenerator[GenerationDelta, None]:
        from vllm import SamplingParams
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        params = SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            output_kind=RequestOutputKind.DELTA,
            # vLLM compiles the schema to a grammar (xgrammar, or guidance where xgrammar lacks
            # a feature) and masks every step's logits with it; a schema it cannot compile is a
            # VLLMValidationError when the request is added, before anything is scheduled.
            structured_outputs=_structured_outputs(sampling, StructuredOutputsParams),
        )
        # A rendered token input: vLLM uses these ids as they are, never re-tokenizes.
        stream = self._llm.generate(tokens_input(list(prompt_token_ids)), params, request_id,
                                    lora_request=self._lora_request(lora))
        try:
            async for out in stream:
                completion = out.outputs[0]
                yield GenerationDelta(
                    text=completion.text,
                    token_ids=tuple(completion.token_ids),
                    prompt_token_count=len(out.prompt_token_ids or prompt_token_ids),
                    finish_reason=(str(completion.finish_reason)
                                   if completion.finish_reason is not None else None),
                )
        except EngineDeadError:
            raise Unavailable("the inference engine is not running") from None
        except GracefulHTTPError as exc:
            raise ResourceExhausted(f"the inference engine is overloaded: {exc}") from None
        except VLLMClientError as exc:
            raise InvalidArgument(str(exc)) from None
        finally:
            # Closing vLLM's generator early (our caller went away) aborts the request there.
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def loaded_adapters(self) -> set[int]:
        """The adapter ids vLLM holds in memory now (at most max_cpu_loras: LRU-evicted)."""
        return set(await self._llm.list_loras())

    async def lora_path(self) -> str:
        """The CPU LoRA implementation every worker process runs (vllm_worker.lora_path):
        `kernel`, `fused`, `per-op`, or `stock` when the extension is not installed."""
        try:
            paths = set(await self._llm.collective_rpc("lora_path"))
        except Exception:  # noqa: BLE001 - the extension is not installed: vLLM's own ops
            return "stock"
        return paths.pop() if len(paths) == 1 else "mixed: " + ", ".join(sorted(paths))

    def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
            # Dropping the last reference now runs vLLM's __del__ while the interpreter is
            # intact, instead of at exit where it fails noisily.
            del llm
            self._tokenizer = None


def _structured_outputs(sampling: Sampling, params_type):
    """vLLM's constraint for a request's response_format, or None for free text."""
    if sampling.choices:
        return params_type(choice=list(sampling.choices))
    if sampling.json_schema:
        return params_type(json=sampling.json_schema)
    return None
