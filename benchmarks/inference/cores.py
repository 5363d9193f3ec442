"""Benchmark (h): vLLM CPU computing on every core vs keeping one for the serving process.

    .venv/bin/python -m benchmarks.inference.cores [--concurrency 32] [--rounds 3]

vLLM CPU reserves one core by default (VLLM_CPU_NUM_OF_RESERVED_CPU=1): on a 2-core machine
the engine computes on one core while the service's own process (gRPC, tokenizing, the usage
outbox) has the other. Two complete inference services run here, identical but for that
setting (read by each engine core when it is spawned), each with its gRPC server in this
process as in production. Rounds interleave them: a wave of `--concurrency` `Complete`
requests on the base model, then the same on one adapter, against one service at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    spawn_environment,
    start_control,
    write_result,
)
from finetune.inference.v1 import inference_pb2

PROMPT = "Write a short story about a lighthouse keeper."
VARIANTS = {"one core reserved (vLLM's default)": "1", "every core computes (ours)": "0"}


async def wave(stub, model: str, n: int, max_tokens: int) -> dict:
    async def one():
        r = await stub.Complete(inference_pb2.CompleteRequest(
            model=model, prompt=PROMPT, options=inference_pb2.CompletionOptions(
                max_tokens=max_tokens)), metadata=metadata(), timeout=600)
        return r.usage.prompt_tokens, r.usage.completion_tokens

    start = time.perf_counter()
    counts = await asyncio.gather(*[one() for _ in range(n)])
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2),
            "output_tokens_per_s": round(sum(c[1] for c in counts) / seconds, 1)}


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    result = {"benchmark": "cores", "machine_before": machine(), "settings": vars(args)}
    control, control_server = await start_control(base)
    with tempfile.TemporaryDirectory(prefix="bench-cores-") as folder:
        tmp = Path(folder)
        adapter = random_adapter(base, tmp / "jobs/ft_0/output", seed=5, rank=16)
        control.models["db.public.tuned"] = (adapter.as_uri(), 4242)
        services = {}
        try:
            async with contextlib.AsyncExitStack() as stack:
                for name, reserved in VARIANTS.items():
                    state = tmp / reserved
                    state.mkdir()
                    config = engine_config(base, state, max_num_seqs=args.concurrency,
                                           max_queued_requests=args.concurrency * 2)
                    with spawn_environment(VLLM_CPU_NUM_OF_RESERVED_CPU=reserved):
                        services[name] = await stack.enter_async_context(
                            served_engine(config, control_server.address, state))
                runs: dict = {name: {"base": [], "adapter": []} for name in VARIANTS}
                for _, stub in services.values():   # warm-up
                    for model in (base.name, "db.public.tuned"):
                        await wave(stub, model, 2, 4)
                result["dtype"] = {name: engine.info.dtype
                                   for name, (engine, _) in services.items()}
                for round_ in range(args.rounds):
                    for name, (_, stub) in services.items():
                        for workload, model in (("base", base.name),
                                                ("adapter", "db.public.tuned")):
                            r = await wave(stub, model, args.concurrency, args.max_tokens)
                            runs[name][workload].append(r["output_tokens_per_s"])
                            print(f"round {round_ + 1} {name:28s} {workload:8s} "
                                  f"{r['output_tokens_per_s']:7.1f} output tok/s", flush=True)
        finally:
            await control_server.stop(0)
    result["output_tokens_per_s"] = {
        name: {w: {"rounds": v, "median": round(statistics.median(v), 1), "best": max(v)}
               for w, v in per.items()} for name, per in runs.items()}
    result["machine_after"] = machine()
    write_result("cores", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this module
    main()
