"""Writes docs/reliability.md from the hostile-input corpus's counts.

    make reliability      # FINETUNE_HOSTILE_EXAMPLES=10000, then this script

The counts come from tests/integration/reliability/test_hostile_inputs.py, run with
FINETUNE_HOSTILE_REPORT naming a JSON file: per RPC and status code, how many inputs got it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
# What the corpus found, once fixed: (date, input, what it did, the fix). Kept by hand.
FOUND = [
    ("2026-12-03", "`ListFineTuningUsage` (and the other usage RPCs) with `filter.end_time.nanos`"
     " = -2^31", "INTERNAL: protobuf's `ToDatetime` raised on a Timestamp it cannot read",
     "INVALID_ARGUMENT naming the field (`api/messages.time_or_none`), unit-tested"),
]


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def render(report: dict, seconds: float, commit: str) -> str:
    by_rpc: dict[str, dict[str, int]] = defaultdict(dict)
    codes: set[str] = set()
    for path, code, n in report["counts"]:
        by_rpc[path][code] = n
        codes.add(code)
    order = sorted(codes, key=lambda c: (c != "OK", c))
    total = sum(n for path, _, n in report["counts"] if path.startswith("/"))
    lines = [
        "# Reliability: hostile inputs over every public RPC",
        "",
        "How the services are tested against bad input, and the latest full run's counts.",
        "",
        "**The corpus** (`tests/hostile_inputs.py`): a request message for each public RPC of",
        "control and inference, generated from its protobuf descriptor with Hypothesis (seeded:",
        "`derandomize=True`, so a run is repeatable). Strings come from a hand-kept list of",
        "known-bad inputs (SQL escapes and sandbox probes such as `read_csv`, `COPY ... TO`,",
        "`ATTACH`, `INSTALL`, `SET`, `getenv`, two statements; path names; oversized fields;",
        "unicode edge cases; deep and self-referencing JSON), generated text, and the names of",
        "objects that exist, so that calls also get past the first check. Integers take their",
        "type's edges, floats NaN and infinities, enums unknown numbers; callers are the admin,",
        "a user without privileges, a forged key and no key.",
        "",
        "**The assertions** (`tests/integration/reliability/test_hostile_inputs.py`, against",
        "`python -m services.control` and `python -m services.inference` on loopback): every",
        "answer is a documented status (never INTERNAL, UNKNOWN or DATA_LOSS), none takes",
        "longer than its deadline, both processes stay up, no answer carries a byte of a",
        "canary file outside the data folder, no file appears beside it, and afterwards both",
        "services answer a known-good request. The CLI's commands get the same strings as",
        "arguments (typer's runner, the same processes): an exit code and a message, never a",
        "traceback. CI runs a 300-input slice; `make reliability` runs the full corpus and",
        "rewrites this page.",
        "",
        "## Found, and fixed",
        "",
        "| found | input | what it did | fix |",
        "|---|---|---|---|",
        *[f"| {d} | {i} | {w} | {f} |" for d, i, w, f in FOUND],
        "",
        "Reproduce a failure from the test's output: Hypothesis prints the failing input and",
        "a `@reproduce_failure` blob; the corpus is seeded, so the same command finds it again.",
        "",
        "## Not covered yet",
        "",
        "Faults under load (killing control, inference and Ray workers during traffic), a soak,",
        "a full disk and a locked metadata database. The corpus is broad rather than deep: most",
        "inputs stop at the first check they fail, and few reach a job's training or a long",
        "generation (see the OK column).",
        "",
        "## Latest full run",
        "",
        f"Up to {report['examples']} inputs to control and "
        f"{max(50, report['examples'] // 5)} to inference, shared evenly over their RPCs "
        f"({total} calls: an RPC whose request has few fields runs out of distinct inputs "
        f"sooner), {seconds:.0f} s, commit `{commit}`, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, on `{cpu()}` "
        f"({os.cpu_count()} cores). Every call ended in a documented status. Most inputs stop at "
        "the first check they fail (INVALID_ARGUMENT, UNAUTHENTICATED); the OK column is how "
        "many got through every check.",
        "",
        "| RPC | " + " | ".join(order) + " |",
        "|---|" + "---:|" * len(order),
    ]
    cli = {path: by_rpc.pop(path) for path in sorted(by_rpc) if not path.startswith("/")}
    for path in sorted(by_rpc):
        lines.append(f"| `{path.rsplit('/', 1)[-1]}` ({path.split('/')[1].rsplit('.', 1)[-1]}) | "
                     + " | ".join(str(by_rpc[path].get(c, "")) for c in order) + " |")
    if cli:
        exits = sorted({code for counts in cli.values() for code in counts})
        lines += ["", "The CLI, each command with hostile arguments (`exit 1`: the service",
                  "refused, with its message; `exit 2`: bad usage); never a traceback:", "",
                  "| command | " + " | ".join(exits) + " |", "|---|" + "---:|" * len(exits)]
        lines += [f"| `finetune {path.removeprefix('cli ')}` | "
                  + " | ".join(str(counts.get(c, "")) for c in exits) + " |"
                  for path, counts in cli.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--commit", default="", help="the commit the run tested (default: HEAD)")
    args = p.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip()
    DOC.write_text(render(json.loads(args.report.read_text()), args.seconds, commit))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
