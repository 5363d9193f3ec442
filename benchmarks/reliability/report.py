"""Writes docs/reliability.md from the hostile-input corpus's counts.

    make reliability      # FINETUNE_HOSTILE_EXAMPLES=10000, then this script

The counts come from tests/integration/reliability/test_hostile_inputs.py, run with
FINETUNE_HOSTILE_REPORT naming a JSON file: per RPC and status code, how many inputs got it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from services.common.hardware import cpu_model

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
RESULTS = Path(__file__).resolve().parent / "results"
SECTION = "## Latest full run"


def cpu() -> str:
    return cpu_model() or "unknown"


def replace_section(doc: str, heading: str, section: str) -> str:
    """The doc with the section under `heading` (up to the next `## `) replaced, or appended;
    the hand-kept rest of the page stays as it is."""
    begin = doc.find(heading)
    if begin < 0:
        return doc.rstrip("\n") + "\n\n" + section
    end = doc.find("\n## ", begin + len(heading))
    return doc[:begin] + section + ("" if end < 0 else "\n" + doc[end + 1:])


def record_run(kind: str, result: dict, heading: str, section: Callable[[dict, str], str],
               write_doc: bool, hidden: tuple[str, ...] = ()) -> None:
    """The end of a reliability run: stamp the result with the date, the CPU and the commit,
    keep it in results/<kind>-<time>.json, print it (less `hidden`), rewrite its section of
    docs/reliability.md when `write_doc`, and exit 1 if it recorded failures."""
    now = datetime.now(timezone.utc)
    result["date"] = f"{now:%Y-%m-%d %H:%M}"
    result["cpu"] = cpu()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{now:%Y%m%dT%H%M}.json"
    out.write_text(json.dumps({**result, "commit": commit}, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in hidden}, indent=2))
    if write_doc:
        DOC.write_text(replace_section(DOC.read_text(), heading, section(result, commit)))
        print(f"wrote {DOC}")
    sys.exit(1 if result["failures"] else 0)


def render(report: dict, seconds: float, commit: str) -> str:
    """The latest run's section of docs/reliability.md."""
    by_rpc: dict[str, dict[str, int]] = defaultdict(dict)
    codes: set[str] = set()
    for path, code, n in report["counts"]:
        by_rpc[path][code] = n
        codes.add(code)
    order = sorted(codes, key=lambda c: (c != "OK", c))
    total = sum(n for path, _, n in report["counts"] if path.startswith("/"))
    lines = [
        SECTION,
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
    section = render(json.loads(args.report.read_text()), args.seconds, commit)
    DOC.write_text(replace_section(DOC.read_text(), SECTION, section))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
