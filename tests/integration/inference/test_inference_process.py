"""`python -m services.inference` as a real process: NOT_SERVING while the engine starts, SERVING
when ready, and on SIGTERM it lets the calls in flight finish before it exits cleanly; SIGKILLed
while control is down, it delivers every answered request's usage once after its restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from inference_processes import free_port, health_statuses_until_serving, kill, spawn_inference
from polling import wait_until_async

from finetune.inference.v1 import inference_pb2, inference_pb2_grpc
from services.inference.outbox import OutboxStore

pytestmark = pytest.mark.integration

KEY = (("authorization", "Bearer key-alice"),)


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
         "--adapter-cache-dir", str(tmp_path / "adapters"),
         "--state-dir", str(tmp_path / "state")],
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


async def test_usage_survives_a_sigkill_and_is_counted_once(control, names, base_model_spec,
                                                             tmp_path):
    """Control refuses usage while inference answers; inference is SIGKILLed with answers
    recorded and requests in flight; after a restart (and lost acknowledgements, which make
    it send some records twice) control holds exactly one row per answered request. A request
    the caller named with its own request_id, resent to the new process as a client retries
    an answer it never saw, gets the same answer back and no second row."""
    carol = (("authorization", "Bearer key-carol"),)  # a user only this test uses
    port = free_port()
    address = f"127.0.0.1:{port}"
    control.usage_down = True
    proc = spawn_inference(control.address, names.SERVICE_TOKEN, base_model_spec.name,
                           tmp_path, port, "first.log")
    answered = {}
    try:
        await health_statuses_until_serving(address, proc, limit_s=400)
        async with grpc.aio.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            for i, model in enumerate([base_model_spec.name, names.MODEL_B] * 2):
                r = await stub.Complete(inference_pb2.CompleteRequest(
                    model=model, prompt=f"Give me a number bigger than {i}.",
                    options=inference_pb2.CompletionOptions(max_tokens=3 + i)),
                    metadata=carol, timeout=120)
                answered[r.request_id] = r.usage
            named = await stub.Complete(named_request(names.MODEL_B), metadata=carol, timeout=120)
            # Two long requests in flight when the process dies: never answered, never billed.
            streams = [stub.CompleteStream(inference_pb2.CompleteRequest(
                model=m, prompt="Write a very long story about a lighthouse.",
                options=inference_pb2.CompletionOptions(max_tokens=1500)), metadata=carol,
                timeout=300) for m in (base_model_spec.name, names.MODEL_B)]
            for call in streams:
                assert (await call.read()).delta
            kill(proc)
            for call in streams:
                with pytest.raises(grpc.aio.AioRpcError):
                    while await call.read() is not grpc.aio.EOF:
                        pass
    finally:
        kill(proc)

    assert not control.rows_of("carol")
    assert len(answered) == 4 and named.request_id == "carol-retries-this"
    store = OutboxStore(tmp_path / "state" / "usage-outbox.sqlite3")
    assert store.counts() == (5, 0)  # every answer's record survived the kill
    store.close()

    control.usage_down = False
    control.usage_lose_acks = 2      # control commits, then the answer is lost: sent again
    calls_before = len(control.usage_calls)
    port = free_port()
    proc = spawn_inference(control.address, names.SERVICE_TOKEN, base_model_spec.name,
                           tmp_path, port, "second.log")
    try:
        # The outbox starts before the engine: no need to wait for SERVING. Bounded wait.
        def delivered() -> bool:
            assert proc.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            return len(control.rows_of("carol")) >= 5 and not _live_rows(tmp_path)

        await wait_until_async(delivered, 300, "usage to be delivered after the restart")
        await health_statuses_until_serving(f"127.0.0.1:{port}", proc, limit_s=400)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            again = await inference_pb2_grpc.InferenceServiceStub(ch).Complete(
                named_request(names.MODEL_B), metadata=carol, timeout=120)
        assert (again.text, again.usage, again.request_id) == (
            named.text, named.usage, named.request_id)
        assert not _live_rows(tmp_path)   # nothing new to bill
    finally:
        kill(proc)

    rows = control.rows_of("carol")
    [named_row] = set(rows) - set(answered)   # none lost, none extra (the in-flight ones)
    assert (rows[named_row].prompt_tokens, rows[named_row].completion_tokens) == (
        named.usage.prompt_tokens, named.usage.completion_tokens)
    for rid, usage in answered.items():
        assert (rows[rid].prompt_tokens, rows[rid].completion_tokens) == (
            usage.prompt_tokens, usage.completion_tokens)
    resent = [c for c in control.usage_calls[calls_before:] if c.user_id == "carol"]
    assert len(resent) == 5 + 2       # the two lost acknowledgements were retried ...
    assert all(c == rows[c.request_id] for c in resent)   # ... with the very same record


# Temperature 1: a second generation would almost surely differ, a kept answer cannot.
def named_request(model: str) -> inference_pb2.CompleteRequest:
    return inference_pb2.CompleteRequest(
        model=model, prompt="Name three colours.", request_id="carol-retries-this",
        options=inference_pb2.CompletionOptions(max_tokens=12, temperature=1.0))


def _live_rows(tmp_path: Path) -> int:
    store = OutboxStore(tmp_path / "state" / "usage-outbox.sqlite3")
    try:
        return store.counts()[0]
    finally:
        store.close()
