"""The ingress's cold start: importing its entry point loads nothing it does not use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Used by the worker only: generation, images, providers, Storage, Cloud Tasks, FCM.
WORKER_ONLY = ("numpy", "PIL", "google.genai", "google.cloud.storage", "google.cloud.tasks_v2",
               "firebase_admin.messaging", "pygltflib", "kiln.providers.registry",
               "kiln.providers.gemini", "kiln.providers.meshy", "kiln.runtime.worker",
               "kiln.runtime.results", "kiln.adapters.storage", "kiln.adapters.fcm",
               "kiln_dev")


def test_the_ingress_entry_point_imports_no_worker_only_module() -> None:
    """Given a fresh interpreter, when it imports functions/ingress/main.py as the platform
    does, then no image library, provider, Storage, Cloud Tasks or FCM module is loaded."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'functions' / 'ingress')!r}); "
            "import main; print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=REPO)
    loaded = set(json.loads(out.stdout))
    assert "kiln.http.api" in loaded  # the probe imported the real entry point
    assert sorted(m for m in WORKER_ONLY if m in loaded) == []
