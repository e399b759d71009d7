"""The chaos suite, short: jobs through the real stack while every fault kind strikes.

Runs ``python -m kiln_dev.chaos`` as an operator would (its own stack, its own ports) and
reads the JSON report: no job lost, no duplicate push or artifact, every failure coded,
and every fault kind actually injected (a chaos run that broke nothing shows nothing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def chaos_command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "kiln_dev.chaos", "--jobs", "36", "--seed", "7", "--rate", "6",
            "--max-age", "60", "--fault-interval", "1.0", "--drain-timeout", "150",
            "--json", str(workdir / "chaos.json")]


@pytest.mark.background(command=chaos_command)
def test_short_chaos_run_keeps_every_promise(background: Any) -> None:
    """Given 36 jobs and all fault kinds, when the run drains, then 0 lost, 0 duplicate
    pushes, 0 duplicate artifacts, every failure has a code, and the exit code is 0.
    (The run starts with the suite and is checked last: see ``background`` in conftest.)"""
    returncode, detail = background.wait(timeout=300)
    out = background.workdir / "chaos.json"
    assert out.exists(), detail
    report = json.loads(out.read_text())
    assert report["accepted"] == 36, detail
    assert report["lost"] == [], detail
    assert report["duplicatePushes"] == [], detail
    assert report["duplicateArtifacts"] == [], detail
    assert report["uncoded"] == 0, detail
    assert report["completed"] + report["failed"] + report["canceled"] == 36
    assert report["completed"] >= 20, detail
    faults = report["faults"]
    for kind in ("duplicate_deliveries", "worker_process_killed", "worker_function_restarted",
                 "storage_outage", "pubsub_outage_for_functions", "pubsub_emulator_restarted",
                 "storage_emulator_restarted"):
        assert faults.get(kind, 0) > 0, f"{kind} never happened: {faults}"
    # Waiting model jobs' checks went through the Cloud Tasks emulator (some lost: chaos).
    assert faults.get("scheduled_checks_dispatched", 0) > 0, faults
    # The provider's callbacks arrived and misbehaved (which ways, and how often, is drawn
    # per task: a run of a dozen remote tasks need not see every kind).
    assert faults.get("callback_end_200", 0) > 0, faults
    assert sum(faults.get(kind, 0) for kind in ("callback_forged_401", "callback_early_200",
               "callback_duplicate_200", "callback_reordered_200")) > 0, faults
    assert any(k.startswith("storage_") and k not in ("storage_outage",
               "storage_emulator_restarted") for k in faults), faults
    assert returncode == 0, detail
