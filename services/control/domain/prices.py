"""The price table: credits per million tokens, per base model, for training and for inference
(pure; deploy/prices.toml is parsed into it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

TOKENS_PER_UNIT = 1_000_000


@dataclass(frozen=True)
class Price:
    training: float = 0.0    # credits per million trained tokens
    inference: float = 0.0   # credits per million prompt + completion tokens


@dataclass(frozen=True)
class PriceTable:
    models: Mapping[str, Price] = field(default_factory=dict)
    default: Price = Price()   # for base models the table does not name

    def price(self, base_model: str) -> Price:
        return self.models.get(base_model, self.default)

    def training_credits(self, base_model: str, tokens: int) -> float:
        return self.price(base_model).training * max(0, tokens) / TOKENS_PER_UNIT

    def inference_credits(self, base_model: str, tokens: int) -> float:
        return self.price(base_model).inference * max(0, tokens) / TOKENS_PER_UNIT


def parse_prices(raw: Mapping) -> PriceTable:
    """`[default]` and `[models.<base model>]` tables with `training` and `inference` keys."""
    def price(entry, where: str, fallback: Price) -> Price:
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a table")
        unknown = set(entry) - {"training", "inference"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        values = {}
        for key in ("training", "inference"):
            value = entry.get(key, getattr(fallback, key))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{where}.{key} must be a non-negative number")
            values[key] = float(value)
        return Price(**values)

    default = price(raw.get("default", {}), "default", Price())
    models = raw.get("models", {})
    if not isinstance(models, Mapping):
        raise ValueError("models must be a table of base models")
    return PriceTable({name: price(entry, f"models.{name}", default)
                       for name, entry in models.items()}, default)
