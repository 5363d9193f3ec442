"""Every integration test can import the shared process helpers in
tests/integration/control/control_processes.py (a local Ray head, the control service, a
scripted cluster, waiting for a Ray job), whichever folder it lives in."""

import sys
from pathlib import Path

CONTROL_TESTS = Path(__file__).resolve().parent / "control"
if str(CONTROL_TESTS) not in sys.path:
    sys.path.insert(0, str(CONTROL_TESTS))
