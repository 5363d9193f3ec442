"""Every integration test can import the shared process helpers, whichever folder it lives in:
tests/integration/control/control_processes.py (a local Ray head, the control service, a
scripted cluster, waiting for a Ray job) and tests/integration/inference/inference_processes.py
(the inference service and the router as processes)."""

import sys
from pathlib import Path

for folder in ("control", "inference"):
    helpers = Path(__file__).resolve().parent / folder
    if str(helpers) not in sys.path:
        sys.path.insert(0, str(helpers))
