"""What the inference core counts: tokens once per recorded completion, adapters validated or
refused, evictions seen between samples of the engine's resident set."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.errors import FailedPrecondition
from services.common.metrics import InferenceMetrics, exposition, new_registry
from services.inference.accounting import MeteredLedger, Usage, UsageRecord
from services.inference.adapters import AdapterRegistry, AdapterResidency
from services.inference.completions import CompletionInput, Completions, Limits


def values(registry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(exposition(registry).decode())
            for s in f.samples}


class Ledger:
    def __init__(self, fail=False):
        self.records, self.fail = [], fail

    async def record(self, record):
        if self.fail:
            raise OSError("disk full")
        self.records.append(record)

    async def answered(self, account_id, request_id):
        return None


async def test_tokens_are_counted_once_and_only_once_recorded():
    registry = new_registry()
    metrics = InferenceMetrics(registry)
    record = UsageRecord("r1", "acct", "u1", "m", "base-a", Usage(7, 3))
    await MeteredLedger(Ledger(), metrics).record(record)
    with pytest.raises(OSError):
        await MeteredLedger(Ledger(fail=True), metrics).record(record)
    got = values(registry)
    assert got[("finetune_prompt_tokens_total", (("base_model", "base-a"),))] == 7
    assert got[("finetune_completion_tokens_total", (("base_model", "base-a"),))] == 3


async def test_a_completion_counts_its_usage_tokens(engine, resolver, registry, usage):
    metrics_registry = new_registry()
    metrics = InferenceMetrics(metrics_registry)
    completions = Completions(engine, resolver, registry, MeteredLedger(usage, metrics),
                              Limits(default_max_tokens=16, max_in_flight=4))
    result = await completions.complete("key", CompletionInput(model="tiny", prompt="a b c"))
    got = values(metrics_registry)
    assert got[("finetune_prompt_tokens_total", (("base_model", "tiny"),))] == \
        result.usage.prompt_tokens
    assert got[("finetune_completion_tokens_total", (("base_model", "tiny"),))] == \
        result.usage.completion_tokens


async def test_adapters_loaded_once_and_refusals_counted(tmp_path, fakes):
    metrics_registry = new_registry()
    registry = AdapterRegistry(fakes.BASE, max_rank=16, cache_dir=tmp_path / "cache",
                               base_shapes=lambda: fakes.BASE_SHAPES,
                               metrics=InferenceMetrics(metrics_registry))
    good = fakes.adapter_resolution("m", fakes.write_adapter(tmp_path / "good"), 1)
    bad = fakes.adapter_resolution("b", fakes.write_adapter(tmp_path / "bad", rank=32), 2)
    for _ in range(3):
        await registry.adapter_for(good)
        with pytest.raises(FailedPrecondition):
            await registry.adapter_for(bad)
    got = values(metrics_registry)
    assert got[("finetune_adapters_loaded_total", ())] == 1
    assert got[("finetune_adapters_failed_validation_total", ())] == 1


async def test_evictions_are_adapters_gone_since_the_last_sample():
    registry = new_registry()
    resident = {"now": {1, 2}}

    async def loaded():
        return set(resident["now"])
    residency = AdapterResidency(loaded, InferenceMetrics(registry))
    await residency.sample()
    resident["now"] = {2, 3, 4}
    await residency.sample()
    resident["now"] = {5}
    await residency.sample()
    got = values(registry)
    assert got[("finetune_adapters_evicted_total", ())] == 1 + 3
    assert got[("finetune_adapters_resident", ())] == 1
