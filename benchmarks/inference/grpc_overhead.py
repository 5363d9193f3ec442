"""Benchmark (b): `Complete` over gRPC vs calling the engine in-process, at 1 and 32 concurrent
requests.

    .venv/bin/python -m benchmarks.inference.grpc_overhead [--max-tokens 32]

Three ways to ask the same question of the base model (greedy, the same prompt, the same
number of output tokens, so the engine does identical work):
  engine       VllmEngine.generate in this process: vLLM alone
  core         Completions.complete in this process: + model resolution (cached, over gRPC to
               a loopback control), rendering, admission, the usage outbox's durable write
  grpc         InferenceService.Complete on `python -m services.inference` in its own process,
               called from this one: + gRPC, auth interceptor, protobuf
At concurrency 1 the requests run one after another; at 32, two waves of 32 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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
from services.inference.server import build_completions

PROMPT = "Write a long story about a lighthouse keeper and a storm."
CONCURRENCY = (1, 32)


async def timed(call) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = await call()
    return time.perf_counter() - start, tokens


async def run_levels(make_call, sequential: int, waves: int) -> dict:
    """Latency at concurrency 1 (sequential requests) and 32 (waves of 32 at once)."""
    await make_call()  # warm: first-call paths, prefix cache
    out = {}
    for level in CONCURRENCY:
        latencies, tokens = [], 0
        start = time.perf_counter()
        rounds = sequential if level == 1 else waves
        for _ in range(rounds):
            done = await asyncio.gather(*[timed(make_call) for _ in range(level)])
            latencies += [d[0] for d in done]
            tokens += sum(d[1] for d in done)
        wall = time.perf_counter() - start
        out[f"concurrency_{level}"] = {
            **summary(latencies), "requests_per_s": round(len(latencies) / wall, 2),
            "output_tokens_per_s": round(tokens / wall, 1), "output_tokens": tokens}
        print(f"  concurrency {level:2d}: {out[f'concurrency_{level}']}", flush=True)
    return out


async def in_process(config, base, control_address: str, args, tmp: Path) -> dict:
    engine = VllmEngine.start(config)
    channel = grpc.aio.insecure_channel(control_address)
    outbox = UsageOutbox(OutboxStore(tmp / "inproc-outbox.sqlite3"),
                         GrpcUsageReporter(channel, SERVICE_TOKEN))
    outbox.start()
    try:
        ids = prompt_token_ids(engine.tokenizer, prompt=PROMPT)
        sampling = Sampling(max_tokens=args.max_tokens)
        counter = iter(range(10**9))

        async def engine_call():
            n = 0
            async for delta in engine.generate(f"bench-{next(counter)}", ids, sampling, None):
                n += len(delta.token_ids)
            return n

        completions = build_completions(config, engine,
                                        GrpcModelResolver(channel, SERVICE_TOKEN), outbox)
        request = CompletionInput(model=base.name, prompt=PROMPT, max_tokens=args.max_tokens)

        async def core_call():
            return (await completions.complete(API_KEY, request)).usage.completion_tokens

        print("engine (in-process):", flush=True)
        engine_result = await run_levels(engine_call, args.sequential, args.waves)
        print("core (in-process, with resolution and outbox):", flush=True)
        core_result = await run_levels(core_call, args.sequential, args.waves)
        return {"engine": engine_result, "core": core_result}
    finally:
        await outbox.stop(5)
        await channel.close()
        engine.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(address: str, proc: subprocess.Popen, limit_s: float = 600) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while loop.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the inference process exited during start")
            try:
                status = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("the inference process did not become SERVING")


async def grpc_process(config, base, control_address: str, args, tmp: Path) -> dict:
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = open(tmp / "inference.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.inference", "--host", "127.0.0.1", "--port", str(port),
         "--control", control_address, "--base-model", base.name,
         "--max-loras", str(config.max_loras), "--max-cpu-loras", str(config.max_cpu_loras),
         "--max-lora-rank", str(config.max_lora_rank),
         "--kv-cache-gib", str(config.kv_cache_gib), "--max-num-seqs", str(config.max_num_seqs),
         "--max-queued-requests", str(config.max_queued_requests),
         "--state-dir", str(tmp / "state-grpc"), "--adapter-cache-dir", str(tmp / "ac"),
         "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True,
        env=dict(os.environ, FINETUNE_SERVICE_TOKEN=SERVICE_TOKEN))
    log.close()
    try:
        await wait_serving(address, proc)
        async with grpc.aio.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            request = inference_pb2.CompleteRequest(
                model=base.name, prompt=PROMPT,
                options=inference_pb2.CompletionOptions(max_tokens=args.max_tokens))

            async def grpc_call():
                r = await stub.Complete(request, metadata=metadata(), timeout=600)
                return r.usage.completion_tokens

            print("grpc (separate process):", flush=True)
            return await run_levels(grpc_call, args.sequential, args.waves)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def main_async(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    base = base_model()
    result = {"benchmark": "grpc_overhead", "machine_before": machine(),
              "settings": vars(args) | {"prompt": PROMPT, "model": base.name}}
    control, control_server = await start_control(base)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
            tmp = Path(tmp)
            config = engine_config(base, tmp)
            result.update(await in_process(config, base, control_server.address, args, tmp))
            result["grpc"] = await grpc_process(config, base, control_server.address, args,
                                                tmp)
    finally:
        await control_server.stop(0)
    result["usage_rows_at_control"] = len(control.usage)
    result["machine_after"] = machine()
    write_result("grpc_overhead", result)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--sequential", type=int, default=8, help="requests at concurrency 1")
    p.add_argument("--waves", type=int, default=2, help="waves of 32 at concurrency 32")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this module
    main()
