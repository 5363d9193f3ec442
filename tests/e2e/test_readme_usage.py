"""README.md's "Using it" block, run command by command against a real local stack, so that it
cannot drift from the CLI.

The block runs as written, with these substitutions (and nothing else):
- `source .venv/bin/activate` is replaced by putting this interpreter's bin folder first on PATH,
  and `finetune up` by the module's `stack` fixture plus the endpoints file `up` writes;
- `ft_...` is the id the latest `finetune create` above it printed, `ev_...` the first id the
  latest `finetune evaluate` printed;
- the sample CSVs are replaced by copies of their first rows and `--epochs 3` by `--epochs 1`,
  so that the jobs train for real but briefly (and the test does not depend on the samples' size).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.settings import Endpoints

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TRAINING_SAMPLE = "deploy/samples/support_tickets.csv"
HELD_OUT_SAMPLE = "deploy/samples/held_out_tickets.csv"
TRAINING_ROWS, HELD_OUT_ROWS = 32, 8
SKIPPED = ("source .venv/bin/activate", "finetune up")
# A --wait job trains for real; every other command answers in seconds.
COMMAND_TIMEOUT_S = 1200


def usage_commands(readme: str) -> list[str]:
    """The bash block under "## Using it", one entry per command (continuation lines joined,
    comment-only lines dropped)."""
    section = readme.split("\n## Using it\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md has no bash block under '## Using it'"
    commands, pending = [], ""
    for line in block.group(1).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    assert not pending, "the block ends inside a continued command"
    return commands


def _head(source: Path, target: Path, rows: int) -> Path:
    lines = source.read_text().splitlines(keepends=True)
    target.write_text("".join(lines[:rows + 1]))   # the header and the first rows
    return target


def test_readme_usage_block_runs_as_written(stack, tmp_path):
    commands = usage_commands((ROOT / "README.md").read_text())
    assert any(c.startswith(SKIPPED[1]) for c in commands)
    Endpoints(stack.control_address, stack.inference_address, stack.admin_key()).save(stack.home)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FINETUNE_API_KEY", "FINETUNE_CONTROL", "FINETUNE_INFERENCE")}
    env["FINETUNE_HOME"] = str(stack.home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"   # rich wraps at the terminal width; keep ids on one line
    files = {
        TRAINING_SAMPLE: _head(ROOT / TRAINING_SAMPLE, tmp_path / "tickets.csv", TRAINING_ROWS),
        HELD_OUT_SAMPLE: _head(ROOT / HELD_OUT_SAMPLE, tmp_path / "held_out.csv", HELD_OUT_ROWS),
    }
    job_id = evaluation_id = sweep_id = ""
    outputs: dict[str, str] = {}
    for command in commands:
        if command.startswith(SKIPPED):
            continue
        run = command.replace("--epochs 3", "--epochs 1")
        run = run.replace("--out sweep.png", f"--out {tmp_path / 'sweep.png'}")  # not in the repo
        for sample, copy in files.items():
            run = run.replace(sample, str(copy))
        if "ft_..." in run.split("#")[0]:
            assert job_id, f"{command!r} needs a job created before it"
            run = run.replace("ft_...", job_id)
        if "ev_..." in run.split("#")[0]:
            assert evaluation_id, f"{command!r} needs an evaluation started before it"
            run = run.replace("ev_...", evaluation_id)
        if "sw_..." in run.split("#")[0]:
            assert sweep_id, f"{command!r} needs a sweep created before it"
            run = run.replace("sw_...", sweep_id)
        assignment = re.match(r"([A-Z_]+)=\$\((.*)\)\s*(#.*)?$", run)
        script = (f'{assignment[1]}=$({assignment[2]}) && printf %s "${assignment[1]}"'
                  if assignment else run)
        done = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\n-> exit {done.returncode}\n{out}"
        outputs[command] = out
        if assignment:   # a shell variable later commands use: carried in their environment
            assert done.stdout.strip(), f"{command} set {assignment[1]} to nothing"
            env[assignment[1]] = done.stdout.strip()
        if created := re.findall(r"created (ft_[\w-]+)", out):
            job_id = created[-1]
        if swept := re.findall(r"created (sw_[\w-]+)", out):
            sweep_id = swept[-1]
        if started := re.findall(r"started (ev_[\w-]+)", out):
            evaluation_id = started[0]

    # The main job trained, and the second user acts with her own key, not the admin's.
    waited = next(c for c in commands if "--wait" in c)
    assert "SUCCESS" in outputs[waited], outputs[waited]
    whoami = next(o for c, o in outputs.items() if "whoami" in c)
    assert "user alice" in whoami, whoami
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")   # the trials' chart
    completed = [o for c, o in outputs.items() if "finetune complete" in c]
    assert completed and all(o.strip() for o in completed)
