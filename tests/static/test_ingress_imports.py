"""The ingress's cold start: importing its entry point loads nothing it does not use."""

from __future__ import annotations

import json
import os
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
    loaded = _loaded_by("import main")
    assert "kiln.http.api" in loaded  # the probe imported the real entry point
    assert sorted(m for m in WORKER_ONLY if m in loaded) == []


def test_with_tracing_off_the_ingress_imports_no_opentelemetry() -> None:
    """Given the default settings (``KILN_TRACING`` unset), when a fresh ingress builds its
    services as its first request does, then no OpenTelemetry module is loaded (the bare
    ``opentelemetry`` namespace package is probed by google-api-core; nothing under it)."""
    loaded = _loaded_by("import main; from kiln import compose, tracing; "
                        "compose.get_services(); assert not tracing.enabled()")
    assert "kiln.tracing" in loaded
    assert sorted(m for m in loaded
                  if m.startswith("opentelemetry.") or m == "kiln.tracing_otel") == []


def test_tracing_that_cannot_be_set_up_is_off_not_a_failure_of_every_request() -> None:
    """Given KILN_TRACING naming a file in a folder that does not exist, when a fresh
    ingress builds its services, then it serves untraced and logs why (set-up failures
    made every request a 500, /healthz included)."""
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'functions' / 'ingress')!r}); "
            "import main; from kiln import compose, tracing; compose.get_services(); "
            "assert not tracing.enabled()")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "OTEL_"))},
           "KILN_TRACING": "file:/nonexistent-kiln-folder/spans.jsonl"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tracing is off" in done.stderr


def _loaded_by(statements: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statements`` with the ingress's
    folder on its path, as the platform loads it."""
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'functions' / 'ingress')!r}); "
            f"{statements}; print(json.dumps(sorted(sys.modules)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=REPO, env=env)
    return set(json.loads(out.stdout.splitlines()[-1]))
