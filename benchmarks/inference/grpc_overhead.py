"""Benchmark (b): `Complete` over gRPC vs calling the engine in-process, at 1 and 32 concurrent
requests.

    .venv/bin/python -m benchmarks.inference.grpc_overhead [--max-tokens 32]

Three ways to ask the same question of the base model on one engine (greedy, the same prompt,
the same number of output tokens, so the engine does identical work):
  engine   VllmEngine.generate, in this process: vLLM alone
  core     Completions.complete, in this process: + model resolution (cached; over gRPC to a
           loopback control on a miss), chat-template rendering, admission, and the usage
           outbox's durable write (SQLite, fsync) before the answer
  grpc     InferenceService.Complete over loopback gRPC, server and client in this process:
           + HTTP/2, protobuf, the auth and error interceptors
The variants are interleaved (one request or one wave of each in turn, repeated), so load from
elsewhere on this shared machine hits them alike. At concurrency 1 requests run one at a time;
at 32, waves of 32 at once. Besides wall-clock latency, the CPU time this process spends per
request is reported (the engine core, a separate process, does the same work for every
variant), which load from other processes hardly disturbs; for core and grpc it includes
delivering the usage record and the loopback control's handling of it (same process). The
outbox's write is timed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks.inference.common import (API_KEY, SERVICE_TOKEN, base_model, engine_config,
                                         machine, metadata, start_control, summary,
                                         write_result)
from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.common.chat_format import prompt_token_ids
from services.inference.accounting import GrpcUsageReporter
from services.inference.adapters import GrpcModelResolver
from services.inference.completions import CompletionInput
from services.inference.engine import Sampling, VllmEngine
from services.inference.outbox import OutboxStore, UsageOutbox
from services.inference.server import build_completions, build_server
from services.inference.servicer import InferenceServicer

PROMPT = "Write a long story about a lighthouse keeper and a storm."


async def timed(call) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = await call()
    return time.perf_counter() - start, tokens


async def interleaved(calls: dict, level: int, rounds: int, settle) -> dict:
    """`rounds` times: a wave of `level` concurrent requests of each variant in turn. `settle`
    runs after each wave, inside its CPU window: the usage deliveries a wave caused are
    charged to it, not to the next variant."""
    latencies = {name: [] for name in calls}
    busy = {name: 0.0 for name in calls}
    cpu = {name: 0.0 for name in calls}
    tokens = {name: 0 for name in calls}
    for round_ in range(rounds):
        names = list(calls)
        names = names[round_ % len(names):] + names[:round_ % len(names)]  # rotate the order
        for name in names:
            start, cpu_start = time.perf_counter(), time.process_time()
            done = await asyncio.gather(*[timed(calls[name]) for _ in range(level)])
            busy[name] += time.perf_counter() - start
            await settle()
            cpu[name] += time.process_time() - cpu_start
            latencies[name] += [d[0] for d in done]
            tokens[name] += sum(d[1] for d in done)
    out = {}
    for name in calls:
        out[name] = {**summary(latencies[name]),
                     "requests_per_s": round(len(latencies[name]) / busy[name], 2),
                     "output_tokens_per_s": round(tokens[name] / busy[name], 1),
                     "output_tokens": tokens[name],
                     # CPU this process spent per request (all its threads; not the engine
                     # core's process, which does the same work for every variant): unlike
                     # wall time, hardly moved by other processes on the machine.
                     "serving_cpu_ms_per_request": round(
                         cpu[name] / len(latencies[name]) * 1000, 1)}
        print(f"  concurrency {level:2d} {name:6s}: {out[name]}", flush=True)
    return out


async def outbox_write_ms(outbox: UsageOutbox, n: int = 30) -> dict:
    from services.inference.accounting import Usage, UsageRecord

    times = []
    for i in range(n):
        record = UsageRecord(request_id=f"bench-write-{i}-{time.time_ns()}", account_id="acct",
                             user_id="bench", model="m", base_model="b", usage=Usage(1, 1))
        start = time.perf_counter()
        await outbox.record(record)
        times.append(time.perf_counter() - start)
    return summary(times)


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    result = {"benchmark": "grpc_overhead", "machine_before": machine(),
              "settings": vars(args) | {"prompt": PROMPT, "model": base.name}}
    control, control_server = await start_control(base)
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        tmp = Path(tmp)
        # A resolution cached for the whole run: its expiry would land on whichever variant
        # happens to run then (32 concurrent misses at once).
        config = engine_config(base, tmp, resolution_cache_ttl_s=3600)
        engine = VllmEngine.start(config)
        channel = grpc.aio.insecure_channel(control_server.address)
        outbox = UsageOutbox(OutboxStore(config.usage_outbox_path),
                             GrpcUsageReporter(channel, SERVICE_TOKEN))
        outbox.start()
        completions = build_completions(config, engine,
                                        GrpcModelResolver(channel, SERVICE_TOKEN), outbox)
        server = build_server(config.listen_address, InferenceServicer(completions))
        await server.start()
        client = grpc.aio.insecure_channel(server.address)
        try:
            ids = prompt_token_ids(engine.tokenizer, prompt=PROMPT)
            sampling = Sampling(max_tokens=args.max_tokens)
            counter = iter(range(10**9))
            stub = inference_pb2_grpc.InferenceServiceStub(client)
            request = CompletionInput(model=base.name, prompt=PROMPT, max_tokens=args.max_tokens)
            proto = inference_pb2.CompleteRequest(
                model=base.name, prompt=PROMPT,
                options=inference_pb2.CompletionOptions(max_tokens=args.max_tokens))

            async def engine_call():
                n = 0
                async for delta in engine.generate(f"bench-{next(counter)}", ids, sampling,
                                                   None):
                    n += len(delta.token_ids)
                return n

            async def core_call():
                return (await completions.complete(API_KEY, request)).usage.completion_tokens

            async def grpc_call():
                r = await stub.Complete(proto, metadata=metadata(), timeout=600)
                return r.usage.completion_tokens

            calls = {"engine": engine_call, "core": core_call, "grpc": grpc_call}
            for call in calls.values():  # warm: first-call paths, prefix cache, resolution
                await call()
            async def settle():
                assert await outbox.flush(60) == 0

            result["concurrency_1"] = await interleaved(calls, 1, args.sequential, settle)
            result["concurrency_32"] = await interleaved(calls, 32, args.waves, settle)
            result["outbox_write"] = await outbox_write_ms(outbox)
            print(f"  outbox write: {result['outbox_write']}", flush=True)
        finally:
            await client.close()
            await server.stop(0)
            await outbox.stop(5)
            await channel.close()
            engine.shutdown()
            await control_server.stop(0)
    result["usage_rows_at_control"] = len(control.usage)
    result["machine_after"] = machine()
    write_result("grpc_overhead", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--sequential", type=int, default=8, help="requests at concurrency 1")
    p.add_argument("--waves", type=int, default=2,
                   help="waves of 32 of each variant at concurrency 32")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this module
    main()
