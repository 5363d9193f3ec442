"""A launcher of the local stack (the CLI's `demo`, a benchmark) that gets SIGTERM stops its
children: they run in their own sessions, so nothing else would."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from polling import wait_until

pytestmark = pytest.mark.integration

# The launcher starts with SIGTERM's default action, as a shell starts it: an ignored signal is
# inherited through exec, and a CI runner may hand pytest SIGTERM ignored (LocalStack then,
# rightly, leaves the disposition alone and the launcher never stops).
LAUNCHER = """
import json, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_DFL)
from services.cli.stack import LocalStack, StackConfig
stack = LocalStack(StackConfig(home=Path(sys.argv[1]), base_model=sys.argv[2]))
stack.start(inference=False)
try:
    print(json.dumps({"pids": [p.popen.pid for p in stack.procs],
                      "ray_tmp": str(stack._ray_tmp)}), flush=True)
    time.sleep(600)
finally:
    stack.stop()
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[-1][0] != "Z"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return [pid for pid in found if alive(pid)]


def test_sigterm_to_the_launcher_stops_ray_and_control(tmp_path, base_model_spec):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "home"), base_model_spec.name],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[3])
    started = {"pids": [], "ray_tmp": "/nonexistent"}
    try:
        started = json.loads(launcher.stdout.readline())
        assert len(started["pids"]) == 2 and all(alive(pid) for pid in started["pids"])
        assert processes_mentioning(started["ray_tmp"]), "Ray's own processes were not found"
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) == 128 + signal.SIGTERM
        assert not [pid for pid in started["pids"] if alive(pid)]
        # raylet and GCS exit after `ray start --block`
        wait_until(lambda: not processes_mentioning(started["ray_tmp"]), 60,
                   "Ray's own processes to exit",
                   diagnose=lambda: f"still running: {processes_mentioning(started['ray_tmp'])}")
    finally:   # whatever failed, leave nothing running
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in [*started["pids"], *processes_mentioning(started["ray_tmp"])]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
