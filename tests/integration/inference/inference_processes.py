"""`python -m services.inference` and `python -m services.router` as real processes for the
tests: started on free ports, waited for through gRPC health, killed with their whole process
group (the engine core too). The module name is unique across the test tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import wait_until_async

from services.common.ports import free_port  # noqa: F401 - for the tests


async def health_statuses_until_serving(address: str, proc: subprocess.Popen, limit_s: float):
    """Health answers seen from the first one to SERVING (bounded: a stuck start fails)."""
    seen = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        async def serving() -> bool:
            assert proc.poll() is None, f"the process serving {address} exited during start"
            try:
                status = (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
            except grpc.aio.AioRpcError:
                return False
            if not seen or seen[-1] != status:
                seen.append(status)
            return status == health_pb2.HealthCheckResponse.SERVING

        await wait_until_async(serving, limit_s, f"{address} to be SERVING",
                               every_s=0.2, diagnose=lambda: f"statuses seen {seen}")
    return seen


def spawn(module: str, args: list[str], token: str, tmp_path: Path,
          log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, **(env or {}), FINETUNE_SERVICE_TOKEN=token)
    log = open(tmp_path / log_name, "wb")
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True)
    log.close()
    return proc


def spawn_inference(control_address: str, token: str, base_model: str, tmp_path: Path,
                    port: int, log_name: str, state: str = "state",
                    extra: tuple[str, ...] = (),
                    env: dict[str, str] | None = None) -> subprocess.Popen:
    """An engine with small limits; its usage outbox lives in tmp_path/state."""
    return spawn("services.inference", [
        "--host", "127.0.0.1", "--port", str(port), "--control", control_address,
        "--base-model", base_model, "--max-loras", "2", "--max-cpu-loras", "2",
        "--max-lora-rank", "16", "--kv-cache-gib", "1", "--max-num-seqs", "4",
        "--adapter-cache-dir", str(tmp_path / "adapters"), "--state-dir", str(tmp_path / state),
        *extra], token, tmp_path, log_name, env)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: the engine core process too
        proc.wait()
