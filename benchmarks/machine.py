"""What every benchmark result records about the machine it ran on.

The figures depend on the CPU behind the machine, which has changed from one session to the
next under the same name, so a result names its model, family and the flags that decide bf16
against float32 there, with the cores, memory and load averages.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

# The instruction-set flags that change which precision and kernels win.
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
         "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def describe() -> dict:
    """The CPU (model name, family, model number, flags of interest), cores and memory."""
    from services.common.hardware import cpu_flags

    info = _cpuinfo()
    flags = cpu_flags()
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "family": info.get("cpu family"), "model": info.get("model"),
            "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30, 1)}


def load(averages: Sequence[float] | None = None) -> list[float]:
    """The 1, 5 and 15 minute load averages (now, or the ones given), rounded."""
    return [round(x, 2) for x in (os.getloadavg() if averages is None else averages)]
