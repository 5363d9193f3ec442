"""Where a benchmark's result goes: one JSON file, indented, its folder made if need be."""

from __future__ import annotations

import json
from pathlib import Path


def save(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
