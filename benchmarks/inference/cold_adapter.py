"""Benchmark (c): latency of the first request to an adapter never loaded before, vs a warm one.

    .venv/bin/python -m benchmarks.inference.cold_adapter [--adapters 5] [--rank 16]

The real inference gRPC server (in this process, one engine with max_loras=2, max_cpu_loras=3)
in front of a loopback control. One request at a time, 8 output tokens, for each of
`--adapters` adapters (rank 16, all seven projections, as the trainer writes them by default):
  cold     the first request to an adapter: resolution at control, fetch and validation
           (safetensors headers, shapes), vLLM loading the weights into a slot, generation
  warm     the next request to it: resolution cached, adapter in a slot
  evicted  a request to an adapter vLLM evicted from its CPU cache (more adapters were used
           than max_cpu_loras): already validated, vLLM reloads it from disk
and the base model as the floor. Validation alone is also timed (a fresh registry per adapter).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.inference.common import (
    base_model,
    engine_config,
    machine,
    metadata,
    random_adapter,
    served_engine,
    start_control,
    summary,
    write_result,
)
from finetune.inference.v1 import inference_pb2
from services.inference.adapters import AdapterRegistry, ResolvedModel

PROMPT = "Name three rivers."


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    result = {"benchmark": "cold_adapter", "machine_before": machine(),
              "settings": vars(args) | {"max_loras": 2, "max_cpu_loras": 3, "max_tokens": 8}}
    control, control_server = await start_control(base)
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        tmp = Path(tmp)
        adapters = {}
        for i in range(args.adapters):
            folder = random_adapter(base, tmp / f"jobs/ft_{i}/output", seed=100 + i,
                                    rank=args.rank)
            name = f"db.public.cold_{i}"
            control.models[name] = (folder.as_uri(), 1000 + i)
            adapters[name] = folder
        size = (tmp / "jobs/ft_0/output/adapter_model.safetensors").stat().st_size
        result["adapter_file_mib"] = round(size / 2**20, 2)

        # Validation alone: a fresh registry each time, so nothing is remembered.
        validation = []
        for i, (name, folder) in enumerate(adapters.items()):
            registry = AdapterRegistry(base, args.rank, tmp / "validation-cache")
            start = time.perf_counter()
            await registry.adapter_for(ResolvedModel(
                model=name, base_model=base.name, adapter_uri=folder.as_uri(),
                adapter_id=5000 + i))
            validation.append(time.perf_counter() - start)
        result["validation_only"] = summary(validation)

        config = engine_config(base, tmp, max_loras=2, max_cpu_loras=3, max_lora_rank=args.rank,
                               resolution_cache_ttl_s=300)
        try:
            async with served_engine(config, control_server.address, tmp) as (engine, stub):

                async def ask(model: str) -> float:
                    start = time.perf_counter()
                    await stub.Complete(inference_pb2.CompleteRequest(
                        model=model, prompt=PROMPT,
                        options=inference_pb2.CompletionOptions(max_tokens=8)),
                        metadata=metadata(), timeout=600)
                    return time.perf_counter() - start

                for _ in range(3):  # warm the base path (first-call costs are not the adapter's)
                    await ask(base.name)
                base_latency = [await ask(base.name) for _ in range(args.adapters)]
                cold, warm = [], []
                for name in adapters:
                    cold.append(await ask(name))
                    warm.append(await ask(name))
                    print(f"  {name}: cold {cold[-1] * 1000:.0f} ms, "
                          f"warm {warm[-1] * 1000:.0f} ms", flush=True)
                # The first ones were evicted from vLLM's CPU cache (only the 3 used last stay).
                loaded = await engine.loaded_adapters()
                evicted_names = [n for n in adapters
                                 if control.models[n][1] not in loaded][:args.adapters - 3]
                evicted = []
                for name in evicted_names:
                    evicted.append(await ask(name))
                    print(f"  {name}: evicted {evicted[-1] * 1000:.0f} ms", flush=True)
                result["latency"] = {"base": summary(base_latency), "cold": summary(cold),
                                     "warm": summary(warm), "evicted": summary(evicted)}
                result["cold_ms"] = [round(x * 1000, 1) for x in cold]
                result["warm_ms"] = [round(x * 1000, 1) for x in warm]
                # Paired: each adapter's cold and warm request ran back to back, so their
                # difference is the first-use cost with the machine's load mostly cancelled.
                extra = sorted((c - w) * 1000 for c, w in zip(cold, warm, strict=True))
                result["cold_minus_warm_ms"] = {"each": [round(x, 1) for x in extra],
                                                "median": round(statistics.median(extra), 1)}
        finally:
            await control_server.stop(0)
    result["machine_after"] = machine()
    write_result("cold_adapter", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapters", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this module
    main()
