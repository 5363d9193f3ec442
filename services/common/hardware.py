"""What the CPU says about itself (the precision probe's cache key records it)."""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()
