"""More fine-tuned models than adapter slots: six adapters through max_loras=2 (per batch) and
max_cpu_loras=3 (in memory), so vLLM evicts the least recently used ones and reloads them, and
every answer is still the one its adapter gives alone."""

from __future__ import annotations

import asyncio
import random

import pytest

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.integration

PROMPTS = ["Name a colour.", "What is two plus two?"]


async def complete(inference, model, prompt):
    async with inference.channel() as ch:
        r = await inference_pb2_grpc.InferenceServiceStub(ch).Complete(
            inference_pb2.CompleteRequest(model=model, prompt=prompt,
                                          options=inference_pb2.CompletionOptions(max_tokens=8)),
            metadata=inference.metadata("key-alice"), timeout=300)
    return r.text


async def test_six_adapters_through_two_slots_answer_as_alone(inference, random_adapter):
    models = {}
    for i in range(6):
        name = f"db.public.lru_{i}"
        inference.control.models[name] = (random_adapter(seed=500 + i).as_uri(), 500 + i,
                                          {"alice"})
        models[name] = 500 + i
    # The session engine is configured with these slots (conftest.make_config).
    assert len(models) > 3

    alone = {(m, p): await complete(inference, m, p) for m in models for p in PROMPTS}
    # Distinct adapters answer distinctly, or the comparisons below would prove nothing.
    assert len({alone[m, PROMPTS[0]] for m in models}) == len(models)

    pairs = [(m, p) for m in models for p in PROMPTS]
    random.Random(7).shuffle(pairs)
    together = await asyncio.gather(*[complete(inference, m, p) for m, p in pairs])
    assert [(m, p) for (m, p), text in zip(pairs, together) if text != alone[m, p]] == []

    # Again one at a time in the opposite order: every adapter is evicted and reloaded.
    again = {(m, p): await complete(inference, m, p) for m in reversed(models) for p in PROMPTS}
    assert again == alone

    loaded = await inference.engine.loaded_adapters()
    # max_cpu_loras=3: the three used last stay, everything else was evicted.
    assert loaded == {models[m] for m in list(models)[:3]}
