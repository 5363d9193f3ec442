"""Base-model tokenizers for control: it counts tokens and truncated rows at CREATE (and in
estimates), never trains or generates. Loaded from the catalog's model folder once per base
model and kept."""

from __future__ import annotations

import threading
from typing import Any

from services.common.base_models import BaseModelSpec
from services.common.errors import FailedPrecondition
from services.common.tokenizer import load_tokenizer


class Tokenizers:
    """`tokenizers(base, path)`: the base model's tokenizer from its (provisioned) folder."""

    def __init__(self, load=load_tokenizer):
        self._load = load
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Any] = {}

    def __call__(self, base: BaseModelSpec, path: str) -> Any:
        key = (base.name, str(path))
        with self._lock:  # one load per base model, even under concurrent CREATEs
            if key not in self._cache:
                try:
                    self._cache[key] = self._load(str(path))
                except (OSError, ValueError) as exc:
                    raise FailedPrecondition(
                        f"cannot load the tokenizer of base model {base.name} from "
                        f"{path}: {exc}") from None
            return self._cache[key]
