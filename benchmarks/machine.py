"""What every benchmark result records about the machine it ran on.

The figures depend on the CPU behind the machine, which has changed from one session to the
next under the same name, so a result names its model, family and the flags that decide bf16
against float32 there, with the cores, memory and load averages.
"""

from __future__ import annotations

import os
import platform
from typing import Sequence

# The instruction-set flags that change which precision and kernels win.
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni",
         "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


def describe() -> dict:
    """The CPU (model name, family, model number, flags of interest), cores and memory."""
    from services.common.hardware import cpu_flags, cpu_info, cpu_model

    info = cpu_info()
    flags = cpu_flags()
    return {"cpu": cpu_model() or platform.machine(),
            "family": info.get("cpu family"), "model": info.get("model"),
            "flags": [f for f in FLAGS if f in flags], "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30, 1)}


def load(averages: Sequence[float] | None = None) -> list[float]:
    """The 1, 5 and 15 minute load averages (now, or the ones given), rounded."""
    return [round(x, 2) for x in (os.getloadavg() if averages is None else averages)]
