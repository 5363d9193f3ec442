"""The embedded default deployment: a local Ray head, control and inference on loopback ports.

`finetune up`, `finetune demo` and the end-to-end tests all start the same processes through
LocalStack, so what the tests exercise is what people run.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.base_models import DEFAULT_BASE_MODEL
from services.common.ports import free_port, free_ports

log = logging.getLogger(__name__)


@dataclass
class StackConfig:
    home: Path
    base_model: str = DEFAULT_BASE_MODEL
    host: str = "127.0.0.1"
    control_port: int = 0            # 0 = pick a free port
    inference_port: int = 0
    control_metrics_port: int = 0    # control's /metrics
    http_port: int = 0               # inference's OpenAI-compatible API and /metrics
    ray_cpus: int = 0                # 0 = Ray's own count
    start_timeout_s: float = 300.0
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path


class LocalStack:
    """Starts Ray, control and inference as child processes and stops them in reverse order."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.home = config.home.expanduser().resolve()
        self.service_token = secrets.token_urlsafe(32)
        self.procs: list[Proc] = []
        self.ray_dashboard_url = ""
        self.control_address = ""
        self.inference_address = ""
        self.control_metrics_url = ""   # http://host:port/metrics
        self.http_url = ""              # http://host:port: /v1 (OpenAI-compatible), /metrics
        # Unix socket paths must stay under 107 bytes: Ray's temp dir lives under /tmp.
        self._ray_tmp = Path(tempfile.mkdtemp(prefix="ft-ray-", dir="/tmp"))
        self._previous_sigterm: Any = None   # what signal.signal returned

    @property
    def admin_key_file(self) -> Path:
        return self.home / "admin.key"

    def admin_key(self) -> str:
        return self.admin_key_file.read_text().strip()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, inference: bool = True) -> "LocalStack":
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self._stop_on_sigterm()
        try:
            self._start_ray()
            # Control calls inference for evaluations: its address is fixed before either runs.
            inference_port = (self.config.inference_port or free_port()) if inference else 0
            self._start_control(inference_port)
            if inference:
                self._start_inference(inference_port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._previous_sigterm is not None:   # a second SIGTERM must not cut this short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", proc.name)
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
        self.procs.clear()
        shutil.rmtree(self._ray_tmp, ignore_errors=True)
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def restart_control(self, kill: bool = True) -> None:
        """Stop control (SIGKILL when `kill`: as if its machine died) and start it again on the
        same ports, over the same home, so that inference and clients find it where it was."""
        inference_port = _port(self.inference_address) if self.inference_address else 0
        self._restart("control", kill, lambda: self._start_control(
            inference_port, port=_port(self.control_address),
            metrics_port=_port(self.control_metrics_url.removesuffix("/metrics"))))

    def restart_inference(self, kill: bool = True) -> None:
        """The same for inference: its engine starts again, its usage outbox is kept."""
        self._restart("inference", kill, lambda: self._start_inference(
            _port(self.inference_address), http_port=_port(self.http_url)))

    def _restart(self, name: str, kill: bool, start: Callable[[], None]) -> None:
        proc = next(p for p in self.procs if p.name == name)
        if kill:   # its whole process group: vLLM's engine process dies with it
            os.killpg(proc.popen.pid, signal.SIGKILL)
        else:
            proc.popen.send_signal(signal.SIGTERM)
        proc.popen.wait(timeout=60)
        index = self.procs.index(proc)
        self.procs.remove(proc)
        start()
        self.procs.insert(index, self.procs.pop())   # stopped in the same order as before

    def _stop_on_sigterm(self) -> None:
        """The children run in their own sessions (so that Ctrl-C reaches only this process,
        which stops them in order), so a SIGTERM to this process alone (`timeout`, `kill`, a
        supervisor) would leave them running: turn it into SystemExit, which unwinds through
        `stop()`. Only where the default handler would have killed us outright."""
        if threading.current_thread() is not threading.main_thread() or \
                signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def exit_cleanly(signum, frame):
            raise SystemExit(128 + signum)
        self._previous_sigterm = signal.signal(signal.SIGTERM, exit_cleanly)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- processes ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.config.extra_env)
        env["FINETUNE_SERVICE_TOKEN"] = self.service_token
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # On SIGTERM `ray start --block` first drains the node for Ray Serve, up to 30 s, before
        # it stops its processes; a one-machine stack serves nothing through Ray, so it stops
        # at once (a KubeRay pod keeps the drain).
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        # Ray turns token authentication on by itself when ~/.ray/auth_token exists (one
        # `ray.init()` on the laptop leaves it), and then neither this launcher nor control,
        # which know no token, could reach the stack's own dashboard. The stack's Ray listens
        # on loopback only; an explicit RAY_AUTH_MODE is kept.
        env.setdefault("RAY_AUTH_MODE", "disabled")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log_path = self.home / "logs" / f"{name}.log"
        out = open(log_path, "ab")
        # A new session: Ctrl-C in the terminal reaches the launcher only, which stops the
        # children in order (inference, control, then Ray).
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                 start_new_session=True, cwd=self.home)
        out.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def _start_ray(self) -> None:
        flags = ("--port", "--dashboard-port", "--ray-client-server-port", "--node-manager-port",
                 "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
        ports = dict(zip(flags, free_ports(len(flags)), strict=True))
        argv = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                "--include-dashboard=true", "--dashboard-host", self.config.host,
                "--node-ip-address", self.config.host, "--temp-dir", str(self._ray_tmp),
                "--disable-usage-stats"]
        for flag, port in ports.items():
            argv += [flag, str(port)]
        if self.config.ray_cpus:
            argv += ["--num-cpus", str(self.config.ray_cpus)]
        proc = self._spawn("ray", argv)
        self.ray_dashboard_url = f"http://{self.config.host}:{ports['--dashboard-port']}"
        self._wait_http(proc, self.ray_dashboard_url + "/api/version")

    def _start_control(self, inference_port: int = 0, port: int = 0,
                       metrics_port: int = 0) -> None:
        port = port or self.config.control_port or free_port()
        metrics_port = metrics_port or self.config.control_metrics_port or free_port()
        argv = [sys.executable, "-m", "services.control", "--host", self.config.host,
                "--port", str(port), "--metrics-port", str(metrics_port),
                "--home", str(self.home),
                "--ray-address", self.ray_dashboard_url,
                "--bootstrap-key-file", str(self.admin_key_file)]
        if inference_port:
            argv += ["--inference", f"{self.config.host}:{inference_port}"]
        proc = self._spawn("control", argv)
        self.control_address = f"{self.config.host}:{port}"
        self.control_metrics_url = f"http://{self.config.host}:{metrics_port}/metrics"
        self._wait_serving(proc, self.control_address)

    def _start_inference(self, port: int = 0, http_port: int = 0) -> None:
        port = port or self.config.inference_port or free_port()
        http_port = http_port or self.config.http_port or free_port()
        proc = self._spawn("inference", [
            sys.executable, "-m", "services.inference", "--host", self.config.host,
            "--port", str(port), "--http-port", str(http_port),
            "--control", self.control_address,
            "--base-model", self.config.base_model,
            # Each stack its own usage outbox, so two stacks on one machine never share records.
            "--state-dir", str(self.home / "inference")])
        self.inference_address = f"{self.config.host}:{port}"
        self.http_url = f"http://{self.config.host}:{http_port}"
        self._wait_serving(proc, self.inference_address)

    # -- readiness ------------------------------------------------------------------------------

    def _check_alive(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            tail = proc.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}; "
                               f"log {proc.log_path}:\n{tail}")

    def _wait_http(self, proc: Proc, url: str) -> None:
        import urllib.request

        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            self._check_alive(proc)
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{proc.name} did not answer at {url}")

    def _wait_serving(self, proc: Proc, address: str) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive(proc)
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"{proc.name} was not SERVING at {address} "
                           f"within {self.config.start_timeout_s:.0f} s")


def _port(address: str) -> int:
    """The port of host:port or http://host:port."""
    return int(address.rpartition(":")[2])
