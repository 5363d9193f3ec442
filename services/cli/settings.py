"""Where the CLI finds the services: flags, then FINETUNE_* variables, then the file that
`finetune up` writes into its home folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("FINETUNE_HOME", "~/.finetune")).expanduser()


def endpoints_file(home: Path) -> Path:
    return home / "endpoints.json"


@dataclass
class Endpoints:
    control: str
    inference: str
    api_key: str

    def save(self, home: Path) -> Path:
        path = endpoints_file(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2))
        path.chmod(0o600)  # it holds the admin key
        return path


def resolve_endpoints(control: str | None, inference: str | None, api_key: str | None,
                      home: Path | None = None) -> Endpoints:
    saved: dict = {}
    path = endpoints_file(home or default_home())
    if path.exists():
        saved = json.loads(path.read_text())
    return Endpoints(
        control=(control or os.environ.get("FINETUNE_CONTROL")
                 or saved.get("control", "127.0.0.1:50051")),
        inference=(inference or os.environ.get("FINETUNE_INFERENCE")
                   or saved.get("inference", "127.0.0.1:50052")),
        api_key=api_key or os.environ.get("FINETUNE_API_KEY") or saved.get("api_key", ""),
    )
