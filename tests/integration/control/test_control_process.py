"""`python -m services.control` as the launcher runs it: it migrates an empty home, writes the
bootstrap key, says where it listens, serves, and stops cleanly on SIGTERM."""

import os
import signal
import socket
import stat
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from finetune.control.v1 import access_pb2, access_pb2_grpc
pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    home = tmp_path / "home"
    env = {**os.environ, "FINETUNE_SERVICE_TOKEN": "process-token"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.control", "--host", "127.0.0.1", "--port", str(port),
         "--home", str(home), "--ray-address", f"http://127.0.0.1:{free_port()}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"control listening on 127.0.0.1:{port}", proc.stderr.read()
        key = (home / "bootstrap_key").read_text().strip()
        assert stat.S_IMODE((home / "bootstrap_key").stat().st_mode) == 0o600
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                              timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            me = access_pb2_grpc.AccessServiceStub(channel).WhoAmI(
                access_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {key}")],
                timeout=30)
            assert me.user_name == "admin"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert key in proc.stderr.read()  # logged once, at bootstrap
