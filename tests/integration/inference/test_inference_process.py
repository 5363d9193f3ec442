"""`python -m services.inference` as a real process: NOT_SERVING while the engine starts, SERVING
when ready, and on SIGTERM it lets the calls in flight finish before it exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc

pytestmark = pytest.mark.integration

KEY = (("authorization", "Bearer key-alice"),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def health_statuses_until_serving(address: str, proc: subprocess.Popen, limit_s: float):
    """Health answers seen from the first one to SERVING (bounded: a stuck start fails)."""
    seen = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while loop.time() < deadline:
            assert proc.poll() is None, "the inference process exited during start"
            try:
                status = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
                continue
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == health_pb2.HealthCheckResponse.SERVING:
                return seen
            await asyncio.sleep(0.2)
    raise AssertionError(f"not SERVING within {limit_s} s; statuses seen {seen}")


async def test_start_serve_and_graceful_stop(control, names, base_model_spec, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, FINETUNE_SERVICE_TOKEN=names.SERVICE_TOKEN)
    log = open(tmp_path / "inference.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.inference", "--host", "127.0.0.1", "--port", str(port),
         "--control", control.address, "--base-model", base_model_spec.name,
         "--max-loras", "2", "--max-cpu-loras", "2", "--max-lora-rank", "16",
         "--kv-cache-gib", "1", "--max-num-seqs", "4", "--drain-seconds", "120",
         "--adapter-cache-dir", str(tmp_path / "adapters")],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    log.close()
    try:
        seen = await health_statuses_until_serving(address, proc, limit_s=400)
        assert seen[0] == health_pb2.HealthCheckResponse.NOT_SERVING, seen

        async with grpc.aio.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            r = await stub.Complete(inference_pb2.CompleteRequest(
                model=names.MODEL_B, prompt="Say hello.",
                options=inference_pb2.CompletionOptions(max_tokens=4)), metadata=KEY,
                timeout=120)
            assert r.usage.completion_tokens > 0

            call = stub.CompleteStream(inference_pb2.CompleteRequest(
                model=base_model_spec.name, prompt="Write a long poem about the sea.",
                options=inference_pb2.CompletionOptions(max_tokens=48)), metadata=KEY,
                timeout=300)
            first = await call.read()
            assert first.delta
            proc.send_signal(signal.SIGTERM)
            rest = []
            while (message := await call.read()) is not grpc.aio.EOF:
                rest.append(message)
            # The call in flight was drained, not cut off.
            assert rest and rest[-1].finish_reason in ("stop", "length")
            assert rest[-1].usage.completion_tokens >= len(rest)

        code = await asyncio.to_thread(proc.wait, 180)
        assert code == 0, (tmp_path / "inference.log").read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
