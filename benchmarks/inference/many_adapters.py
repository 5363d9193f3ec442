"""Benchmark (g): many adapters through few slots. 10,000 `Complete` requests over gRPC, spread
at random over 32 adapters and the base model, on an engine with `max_loras=4`: every answer
is checked against what its own model answers alone, and throughput, latency and errors are
reported.

    .venv/bin/python -m benchmarks.inference.many_adapters [--requests 10000] [--adapters 32]

First each model answers each prompt alone (greedy, one request at a time): those are the
references. Then `--requests` requests, `--concurrency` at a time, each a random (model,
prompt) pair. An answer is
  right     identical to its own model's reference,
  wrong     identical to another model's reference for the same prompt (an adapter mix-up),
  drifted   identical to none (batch-dependent numerics, not a mix-up).
References that two models share are reported, since those cannot tell the models apart.
Usage rows at the loopback control are compared with the answers' own counts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import tempfile
import time
from pathlib import Path

import grpc

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

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello to Ada.",
           "Give one word for happy."]


async def ask(stub, model: str, prompt: str, max_tokens: int) -> inference_pb2.CompleteResponse:
    return await stub.Complete(inference_pb2.CompleteRequest(
        model=model, prompt=prompt, options=inference_pb2.CompletionOptions(
            max_tokens=max_tokens, temperature=0)), metadata=metadata(), timeout=600)


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    result = {"benchmark": "many_adapters", "machine_before": machine(),
              "settings": vars(args)}
    control, control_server = await start_control(base)
    with tempfile.TemporaryDirectory(prefix="bench-many-") as folder:
        tmp = Path(folder)
        models = [base.name]
        for i in range(args.adapters):
            adapter = random_adapter(base, tmp / f"jobs/ft_{i}/output", seed=300 + i,
                                     rank=args.rank)
            name = f"db.public.many_{i}"
            control.models[name] = (adapter.as_uri(), 2000 + i)
            models.append(name)
        config = engine_config(base, tmp, max_loras=args.max_loras,
                               max_cpu_loras=args.max_cpu_loras, max_lora_rank=args.rank,
                               max_num_seqs=args.concurrency,
                               max_queued_requests=args.concurrency * 2,
                               resolution_cache_ttl_s=3600)
        try:
            async with served_engine(config, control_server.address, tmp) as (engine, stub):
                start = time.perf_counter()
                reference = {}
                for model in models:
                    for prompt in PROMPTS:
                        reference[model, prompt] = (await ask(stub, model, prompt,
                                                              args.max_tokens)).text
                result["reference_s"] = round(time.perf_counter() - start, 1)
                shared = collections.Counter((p, t) for (_, p), t in reference.items())
                result["ambiguous_references"] = sum(
                    1 for (_, p), t in reference.items() if shared[p, t] > 1)

                rng = random.Random(args.seed)
                plan = [(rng.choice(models), rng.choice(PROMPTS)) for _ in range(args.requests)]
                outcomes: collections.Counter = collections.Counter()
                errors: collections.Counter = collections.Counter()
                drifted: collections.Counter = collections.Counter()
                examples: list[dict] = []
                latencies, answered = [], {}
                queue = iter(plan)
                done = 0

                async def worker():
                    nonlocal done
                    for model, prompt in queue:
                        t0 = time.perf_counter()
                        try:
                            r = await ask(stub, model, prompt, args.max_tokens)
                        except grpc.aio.AioRpcError as exc:
                            errors[exc.code().name] += 1
                            continue
                        latencies.append(time.perf_counter() - t0)
                        answered[r.request_id] = r
                        if r.text == reference[model, prompt]:
                            outcomes["right"] += 1
                        elif any(r.text == reference[m, prompt] for m in models if m != model):
                            outcomes["wrong"] += 1
                        else:
                            outcomes["drifted"] += 1
                            drifted["base" if model == base.name else "adapters"] += 1
                            if len(examples) < 5:
                                examples.append({"model": model, "prompt": prompt,
                                                 "reference": reference[model, prompt],
                                                 "answer": r.text})
                        done += 1
                        if done % 1000 == 0:
                            print(f"  {done} answered, {dict(outcomes)}, errors {dict(errors)}",
                                  flush=True)

                start = time.perf_counter()
                await asyncio.gather(*[worker() for _ in range(args.concurrency)])
                seconds = time.perf_counter() - start
                output_tokens = sum(r.usage.completion_tokens for r in answered.values())
                result["load"] = {
                    "seconds": round(seconds, 1), "answered": len(answered),
                    "outcomes": dict(outcomes), "errors": dict(errors),
                    "requests_per_s": round(len(answered) / seconds, 2),
                    "output_tokens_per_s": round(output_tokens / seconds, 1),
                    "latency": summary(latencies) | {
                        "p99_ms": round(sorted(latencies)[int(0.99 * len(latencies)) - 1]
                                        * 1000, 1)},
                    "models_used": len({m for m, _ in plan}),
                    "drifted_by_model": dict(drifted), "drifted_examples": examples}
                result["adapters_loaded_at_end"] = len(await engine.loaded_adapters())
            # served_engine flushed the outbox on the way out.
            rows = control.usage
            result["usage"] = {
                "rows_for_answers": sum(1 for rid in answered if rid in rows),
                "rows_matching_answers": sum(
                    1 for rid, r in answered.items() if rid in rows
                    and (rows[rid].prompt_tokens, rows[rid].completion_tokens, rows[rid].model)
                    == (r.usage.prompt_tokens, r.usage.completion_tokens, r.model)),
                "rows_in_all": len(rows), "requests_in_all": len(reference) + len(plan)}
        finally:
            await control_server.stop(0)
    result["machine_after"] = machine()
    write_result("many_adapters", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--adapters", type=int, default=32)
    p.add_argument("--max-loras", type=int, default=4)
    p.add_argument("--max-cpu-loras", type=int, default=16)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--seed", type=int, default=7)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this module
    main()
