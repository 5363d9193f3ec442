"""A multi-node Ray cluster on one machine, over loopback: a head and worker nodes, each a
`ray start --block` in its own process group and its own short temp dir, stopped by signalling
that group (and whatever it spawned), never with `ray stop`, which would stop every Ray on the
machine, other people's included. (Imported by the tests and conftest.py; the module name is
unique across the test tree.)

Ray 2.x keeps a `--temp-dir` given to a non-head node (ray._private.node.Node._init_temp: the
head's temp dir is only the default), so every node here has its own session dir, sockets and
logs, and none can be mistaken for another on the same host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil
import pytest
from polling import wait_until

from services.common.ports import free_ports

SERVICE_TOKEN = "cluster-test-token"   # control's, shared with the trainer and inference
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
OBJECT_STORE_BYTES = 400 * 1024 * 1024   # small: two nodes share this machine's memory
# The ports every node has (the head has more, see ray_head). Workers bind random ports
# (--min/max-worker-port 0, as ray.init does), so two nodes on one host never compete for the
# default worker port range.
NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
HEAD_PORTS = ("port", "ray-client-server-port", "dashboard-port")


def _common_flags(temp_dir: str, ports: dict[str, int]) -> list[str]:
    return ["--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}", f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--min-worker-port=0", "--max-worker-port=0",
            *[f"--{name}={port}" for name, port in ports.items()]]


@dataclass
class RayProcess:
    """One `ray start --block` (a head or a worker node) in its own session."""

    name: str
    temp_dir: str
    argv: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None
    node_id: str = ""
    descendants: list[psutil.Process] = field(default_factory=list)

    @property
    def log_path(self) -> str:
        return os.path.join(self.temp_dir, f"{self.name}.log")

    def start(self) -> "RayProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, start_new_session=True, stdout=log,
                                         stderr=subprocess.STDOUT, env=self.env)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        with open(self.log_path, errors="replace") as log:
            return log.read()[-chars:]

    def processes(self) -> list[psutil.Process]:
        """`ray start` and everything it spawned (raylet, agents, workers), still running."""
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def remember_processes(self) -> None:
        """Note the processes spawned so far, so that none outlives the node even if it left
        the process group (Ray workers may)."""
        known = {p.pid for p in self.descendants}
        self.descendants += [p for p in self.processes() if p.pid not in known]

    def kill(self) -> None:
        """SIGKILL to the node and all it spawned: the machine, as far as Ray can tell, is gone."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM first (a raylet that is told to stop unregisters from the GCS), then
        SIGKILL for whatever is left."""
        self._signal(signal.SIGTERM, grace_s=20)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int, grace_s: float = 0) -> None:
        if self.proc is None:
            return
        self.remember_processes()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            for p in self.descendants:   # ours by pid: spawned by this node's `ray start`
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    if p.is_running():
                        p.send_signal(sig)
        try:
            self.proc.wait(timeout=max(grace_s, 15))
        except subprocess.TimeoutExpired:
            if sig != signal.SIGKILL:
                return
            raise
        if sig == signal.SIGKILL:
            psutil.wait_procs([p for p in self.descendants if _alive(p)], timeout=15)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class RayHead(RayProcess):
    dashboard: str = ""       # http://127.0.0.1:<port>: the Jobs API and the state API
    gcs_address: str = ""     # what worker nodes join (`ray start --address`)


def _temp_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")   # short: unix socket path limit


@contextlib.contextmanager
def ray_head(num_cpus: int = 0, env: dict[str, str] | None = None):
    """A Ray head with a dashboard (Jobs API) on free loopback ports, in its own temp dir.
    With num_cpus=0 nothing that needs a CPU runs here: the Ray job's driver (the Jobs API
    places it on the head) and Ray Train's controller do, its workers cannot."""
    temp_dir = _temp_dir("rh")
    names = (*HEAD_PORTS, *NODE_PORTS)
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    head = RayHead(name="head", temp_dir=temp_dir, env=env, argv=[
        RAY, "start", "--head", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        *_common_flags(temp_dir, ports)])
    head.dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    head.gcs_address = f"127.0.0.1:{ports['port']}"
    head.start()
    try:
        _wait_until_head_runs_jobs(head)
        head.node_id = wait_for_node(head.dashboard, lambda n: n["is_head_node"], head)
        head.remember_processes()
        yield head
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_until_head_runs_jobs(head: RayHead) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 180  # a start guard, not an assertion on speed

    def takes_a_job():
        try:
            # Up when it takes a job: the dashboard answers before its job agent is there.
            client = JobSubmissionClient(head.dashboard)
            return client, client.submit_job(entrypoint="true")
        except Exception:  # noqa: BLE001 - not up yet
            if head.proc.poll() is not None:
                pytest.fail(f"the Ray head did not start; ray start said:\n{head.log_tail()}")
            return None

    def said() -> str:
        return f"ray start said:\n{head.log_tail()}"

    client, probe = wait_until(takes_a_job, 180, "the Ray head to take a job", diagnose=said)

    def probe_ended() -> bool:
        status = str(client.get_job_status(probe)).rsplit(".", 1)[-1]
        return status in ("SUCCEEDED", "FAILED", "STOPPED")

    # the same start guard: what is left of the 180 s
    wait_until(probe_ended, round(max(deadline - time.monotonic(), 0.0), 1),
               "the Ray head to run its probe job", diagnose=said)


def start_worker_node(head: RayHead, name: str, num_cpus: int,
                      resources: str | None = None,
                      env: dict[str, str] | None = None) -> RayProcess:
    """`ray start --address=<head>` as node `name`, in its own temp dir; returns once the
    cluster lists it ALIVE. The caller stops (or kills) it; see `ray_worker_node`."""
    temp_dir = _temp_dir("rw")
    ports = dict(zip(NODE_PORTS, free_ports(len(NODE_PORTS)), strict=True))
    node = RayProcess(name=name, temp_dir=temp_dir, env=env, argv=[
        RAY, "start", f"--address={head.gcs_address}", f"--node-name={name}",
        f"--num-cpus={num_cpus}", "--num-gpus=0",
        *([f"--resources={resources}"] if resources else []),
        *_common_flags(temp_dir, ports)])
    node.start()
    try:
        node.node_id = wait_for_node(head.dashboard, lambda n: n["node_name"] == name, node)
        node.remember_processes()
    except BaseException:
        discard_worker_node(node)
        raise
    return node


def discard_worker_node(node: RayProcess) -> None:
    node.stop()
    shutil.rmtree(node.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def ray_worker_node(head: RayHead, name: str, num_cpus: int, **kwargs):
    """A worker node for the `with` block; afterwards stopped, and DEAD for the cluster."""
    node = start_worker_node(head, name, num_cpus, **kwargs)
    try:
        yield node
    finally:
        discard_worker_node(node)
    wait_for_node_dead(head.dashboard, node.node_id)   # not after a failure: it would mask it


def nodes(dashboard: str) -> list[dict]:
    from ray.util.state import list_nodes

    return [n.asdict() for n in list_nodes(address=dashboard, limit=1000,
                                          raise_on_missing_output=False)]


def wait_for_node(dashboard: str, match, starting: RayProcess, timeout_s: float = 180) -> str:
    """The node id of the ALIVE node that `match`es, once the cluster lists it."""
    alive: list[dict] = []

    def said() -> str:
        return f"nodes: {alive}; ray start said:\n{starting.log_tail()}"

    def joined() -> str | None:
        try:
            alive[:] = [n for n in nodes(dashboard) if n["state"] == "ALIVE" and match(n)]
        except Exception:  # noqa: BLE001 - the state API is not up yet
            alive.clear()
        if len(alive) == 1:
            return alive[0]["node_id"]
        if starting.proc.poll() is not None:
            pytest.fail(f"Ray node {starting.name} did not join; {said()}")
        return None

    # a start guard, not an assertion on speed
    return wait_until(joined, timeout_s, f"Ray node {starting.name} to join", diagnose=said)


def wait_for_node_dead(dashboard: str, node_id: str, timeout_s: float = 120) -> None:
    """Until the GCS, too, has the node as DEAD (a later job's worker plan counts only
    live nodes)."""
    def dead() -> bool:
        with contextlib.suppress(Exception):
            return all(n["state"] == "DEAD" for n in nodes(dashboard) if n["node_id"] == node_id)
        return False

    # a hang guard, not an assertion on speed
    wait_until(dead, timeout_s, f"Ray node {node_id} to be DEAD for the cluster after it was "
               "stopped")


def ray_daemons() -> list[tuple[int, list[str]]]:
    """(pid, command line) of every raylet and gcs_server on this machine (anyone's)."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmdline = p.info.get("cmdline") or []
        exe = os.path.basename(cmdline[0]) if cmdline else (p.info.get("name") or "")
        if exe in ("raylet", "gcs_server"):
            found.append((p.pid, cmdline))
    return found
