"""Regenerates the Python stubs beside the .proto files: `python -m services.common.protogen`.

The proto package is the Python import path (finetune.control.v1), so protos/ is the root both
for protoc and for the installed package; no import rewriting is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "protos"
# What protoc writes, removed before each run; hand-written files (finetune/client.py) stay.
GENERATED = "*_pb2*.py*"


def main() -> int:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    for stale in ROOT.rglob(GENERATED):
        stale.unlink()
    rc = protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}",
                      f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *protos])
    if rc != 0:
        return rc
    for proto in ROOT.rglob("*.proto"):  # packages for the import path finetune.control.v1
        folder = proto.parent
        while folder != ROOT:
            (folder / "__init__.py").touch(exist_ok=True)
            folder = folder.parent
    print(f"generated stubs for {len(protos)} proto files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
