"""Precision chosen by measurement: the trainer and the inference engine both ask `choose`.

No CPU flag predicts whether bf16 beats fp32 on a machine (AVX512-BF16 without AMX has gone
either way, AVX2 emulates bf16), so `auto` times each candidate dtype on the base model's own
work and keeps the fastest one that is numerically sound:

- training: forward and backward of one decoder layer of the base model (built from its config,
  random weights) over a micro-batch, frozen weights with the activation gradient, as LoRA trains;
- serving: the matrix products of a prefill and of a batched decode step at the model's shapes.

A candidate is sound when its outputs are finite and within `TOLERANCE` (relative L2 error) of
the float32 reference. The choice is cached per machine (CPU model and flags, torch version,
threads, device), model shape and workload in a JSON file, under a file lock, so later jobs and
processes on the machine skip the probe, and concurrent workers never probe side by side (their
timings would disturb each other).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from services.common.hardware import cpu_flags, cpu_model

log = logging.getLogger(__name__)

TRAINING = "training"
SERVING = "serving"
WORKLOADS = (TRAINING, SERVING)
FP32, BF16 = "fp32", "bf16"
TOLERANCE = 0.05          # bf16 keeps ~3 significant digits; a broken kernel is off by far more
PROBE_VERSION = 1         # bump when the probe's work changes: old cache entries are ignored


@dataclass(frozen=True)
class Timing:
    dtype: str
    seconds: float         # best of the repeats, per probe step
    error: float           # relative L2 error against float32 (0 for float32 itself)

    @property
    def sound(self) -> bool:
        return math.isfinite(self.seconds) and math.isfinite(self.error) \
            and self.error <= TOLERANCE


@dataclass(frozen=True)
class Choice:
    dtype: str                       # fp32 | bf16
    workload: str                    # training | serving
    source: str                      # probe | cache | requested | unsupported
    timings: tuple[Timing, ...] = ()
    key: str = ""

    def speedup(self) -> float | None:
        """How much faster the chosen dtype ran than float32 in the probe."""
        by = {t.dtype: t.seconds for t in self.timings}
        if FP32 not in by or self.dtype not in by or by[self.dtype] <= 0:
            return None
        return by[FP32] / by[self.dtype]

    def summary(self) -> str:
        """One line for logs and job events."""
        if not self.timings:
            return f"{self.workload} precision {self.dtype} ({self.source})"
        parts = ", ".join(f"{t.dtype} {t.seconds * 1e3:.1f} ms" + ("" if t.sound else
                          f" (unsound: error {t.error:.3g})") for t in self.timings)
        when = " earlier" if self.source == "cache" else ""
        return (f"{self.workload} precision {self.dtype} (measured{when} on this machine: "
                f"{parts} per probe step)")

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "workload": self.workload,
                "timings": [asdict(t) for t in self.timings]}

    @classmethod
    def from_json(cls, raw: dict[str, Any], key: str) -> "Choice":
        return cls(raw["dtype"], raw["workload"], "cache",
                   tuple(Timing(**t) for t in raw["timings"]), key)


def decide(timings: Sequence[Timing]) -> str:
    """The fastest sound candidate; float32 when nothing else is sound (it is the reference)."""
    sound = [t for t in timings if t.sound]
    if not sound:
        return FP32
    return min(sound, key=lambda t: (t.seconds, t.dtype != FP32)).dtype


# ------------------------------------------------------------------------------- the cache

def default_cache_path() -> Path:
    return Path.home() / ".cache" / "finetune" / "precision.json"


def machine_key(workload: str, model_shape: dict[str, Any], device: str, threads: int,
                flags: set[str] | None = None) -> str:
    """What a measurement depends on: the CPU (model name and flags), torch, threads, the model's
    shape and the workload. A different machine behind the same path gets a new probe."""
    import torch

    flags = cpu_flags() if flags is None else flags
    identity = {
        "v": PROBE_VERSION, "workload": workload, "device": device, "threads": threads,
        "cpu": cpu_model(), "flags": hashlib.sha256(" ".join(sorted(flags)).encode())
        .hexdigest()[:16], "torch": torch.__version__, "model": model_shape,
        "machine": platform.machine(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


class ProbeCache:
    """Choices by machine key in one JSON file; `locked` serializes probes across processes."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path is not None else default_cache_path()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, key: str) -> Choice | None:
        raw = self._read().get(key)
        if raw is None:
            return None
        try:
            return Choice.from_json(raw, key)
        except (KeyError, TypeError):
            return None

    def put(self, choice: Choice) -> None:
        entries = self._read()
        entries[choice.key] = choice.to_json()
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        tmp.replace(self.path)  # atomic: a reader never sees half a file

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}


# ------------------------------------------------------------------------------- choosing

Probe = Callable[[Sequence[str]], list[Timing]]


def choose(workload: str, candidates: Sequence[str], probe: Probe, key: str,
           cache: ProbeCache | None = None) -> Choice:
    """The cached choice for `key`, else probe the candidates (under the cache's lock, so that
    processes starting together measure one at a time) and remember the result."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}")
    candidates = list(dict.fromkeys([FP32, *candidates]))  # fp32 first: it is the reference
    if len(candidates) == 1:
        return Choice(FP32, workload, "unsupported", key=key)
    cache = cache or ProbeCache()
    with cache.locked():
        cached = cache.get(key)
        if cached is not None and cached.workload == workload:
            return cached
        started = time.perf_counter()
        timings = tuple(probe(candidates))
        choice = Choice(decide(timings), workload, "probe", timings, key)
        log.info("%s (probe took %.1fs)", choice.summary(), time.perf_counter() - started)
        cache.put(choice)
    return choice


# ------------------------------------------------------------------------------- the probes

def model_shape(model_path: str) -> dict[str, Any]:
    """The parts of a model's config that decide its kernels' shapes (the cache key's model)."""
    config = _config(model_path)
    keys = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "vocab_size")
    return {k: getattr(config, k, None) for k in keys}


def _config(model_path: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path)


def _torch_dtype(name: str):
    import torch

    return {FP32: torch.float32, BF16: torch.bfloat16}[name]


def _best_seconds(step: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    step()  # warm-up: oneDNN picks and caches its kernels on the first call
    sync()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def _relative_error(value, reference) -> float:
    value, reference = value.float(), reference.float()
    if not bool(value.isfinite().all()):
        return math.inf
    return float((value - reference).norm() / reference.norm().clamp_min(1e-12))


def _sync(device) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def training_probe(model_path: str, device=None, tokens: int = 1024, sequence: int = 256,
                   repeats: int = 3) -> Probe:
    """Times forward + backward of one decoder layer of `model_path` per candidate dtype: the
    frozen base in that dtype under autocast, float32 activations in and their gradient out."""
    import torch

    device = device or torch.device("cpu")

    def probe(candidates: Sequence[str]) -> list[Timing]:
        from transformers import AutoModelForCausalLM

        config = _config(model_path)
        config.num_hidden_layers = 1
        torch.manual_seed(0)
        reference_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                           attn_implementation="sdpa")
        decoder = reference_model.get_decoder().to(device).requires_grad_(False)
        batch = max(1, tokens // sequence)
        x = torch.randn(batch, sequence, config.hidden_size, device=device) * 0.5
        # A fixed random projection as the loss: the decoder ends in a norm, so a loss such as
        # mean(h^2) would be constant and its gradient pure rounding noise.
        direction = torch.randn(batch, sequence, config.hidden_size, device=device)
        state = {k: v.clone() for k, v in decoder.state_dict().items()}
        reference = None
        timings = []
        for name in candidates:
            dtype = _torch_dtype(name)
            decoder.load_state_dict(state)
            decoder.to(dtype)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 \
                else contextlib.nullcontext()
            inputs = x.clone().requires_grad_(True)
            out: dict[str, Any] = {}
            step = functools.partial(_layer_step, decoder, inputs, direction, autocast, out)
            seconds = _best_seconds(step, repeats, _sync(device))
            if reference is None:
                reference = (out["y"], out["g"])
            error = max(_relative_error(out["y"], reference[0]),
                        _relative_error(out["g"], reference[1]))
            timings.append(Timing(name, seconds, 0.0 if name == FP32 else error))
        return timings

    return probe


def _layer_step(decoder, inputs, direction, autocast, out: dict[str, Any]) -> None:
    """Forward and backward of the decoder; `out` gets its output and the input gradient."""
    inputs.grad = None
    with autocast:
        hidden = decoder(inputs_embeds=inputs, use_cache=False).last_hidden_state
    (hidden.float() * direction).sum().backward()
    out["y"], out["g"] = hidden.detach(), inputs.grad


def _products_step(weights, prefill: dict, decode: dict, head, out: list[Any]) -> None:
    """Each weight times the prefill and the decode rows, then the LM head on the decode rows."""
    import torch.nn.functional as F

    out.clear()
    for w in weights:
        k = w.shape[1]
        out.append(F.linear(prefill[k], w))
        out.append(F.linear(decode[k], w))
    out.append(F.linear(decode[head.shape[1]], head))


def serving_probe(model_path: str, prefill_tokens: int = 512, decode_batch: int = 16,
                  repeats: int = 3) -> Probe:
    """Times the matrix products of one layer for a prefill of `prefill_tokens` plus a decode
    step of `decode_batch` sequences, and the LM head on the decode rows, per candidate dtype."""
    import torch

    def probe(candidates: Sequence[str]) -> list[Timing]:
        config = _config(model_path)
        hidden, inter = config.hidden_size, config.intermediate_size
        heads = config.num_attention_heads
        kv = (getattr(config, "num_key_value_heads", None) or heads) * (hidden // heads)
        shapes = [(hidden, hidden + 2 * kv), (hidden, hidden), (hidden, 2 * inter),
                  (inter, hidden)]
        torch.manual_seed(0)
        weights = [torch.randn(n, k) / math.sqrt(k) for k, n in shapes]
        head = torch.randn(config.vocab_size, hidden) / math.sqrt(hidden)
        inputs = {k: torch.randn(prefill_tokens, k) for k, _ in shapes}
        decode = {k: torch.randn(decode_batch, k) for k, _ in shapes}
        reference = None
        timings = []
        for name in candidates:
            dtype = _torch_dtype(name)
            ws = [w.to(dtype) for w in weights]
            h = head.to(dtype)
            xs = {k: v.to(dtype) for k, v in inputs.items()}
            ds = {k: v.to(dtype) for k, v in decode.items()}
            out: list[Any] = []
            step = functools.partial(_products_step, ws, xs, ds, h, out)
            seconds = _best_seconds(step, repeats, lambda: None)
            flat = torch.cat([o.float().flatten() for o in out])
            if reference is None:
                reference = flat
            timings.append(Timing(name, seconds,
                                  0.0 if name == FP32 else _relative_error(flat, reference)))
        return timings

    return probe


def cpu_bf16_supported() -> bool:
    """Whether this torch can run bf16 on the CPU at all (oneDNN); speed is the probe's job."""
    import torch

    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_training(model_path: str, device=None, cache: ProbeCache | None = None) -> Choice:
    import torch

    device = device or torch.device("cpu")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        device_name = "cuda:" + torch.cuda.get_device_name(device)
    else:
        supported, device_name = cpu_bf16_supported(), "cpu"
    key = machine_key(TRAINING, model_shape(model_path), device_name, torch.get_num_threads())
    return choose(TRAINING, [BF16] if supported else [], training_probe(model_path, device),
                  key, cache)


def choose_serving(model_path: str, threads: int | None = None,
                   cache: ProbeCache | None = None) -> Choice:
    """For a CPU engine: `threads` is how many cores the engine computes on (the probe runs
    with as many)."""
    import torch

    previous = torch.get_num_threads()
    threads = threads or previous
    key = machine_key(SERVING, model_shape(model_path), "cpu", threads)
    torch.set_num_threads(threads)
    try:
        return choose(SERVING, [BF16] if cpu_bf16_supported() else [],
                      serving_probe(model_path), key, cache)
    finally:
        torch.set_num_threads(previous)
