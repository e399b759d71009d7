"""The commands a new user runs: ``kiln demo`` and ``kiln watch``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pygltflib import GLTF2

from kiln_dev.demo import demo
from support import wait_terminal

pytestmark = pytest.mark.e2e


def test_demo_completes_an_image_and_a_glb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``kiln demo`` on its own stack: both jobs complete, files saved, two pushes, exit 0."""
    assert demo(tmp_path, image_prompt="a yellow star", model_prompt="a red cone") == 0
    files = sorted(p.name.split("-", 1)[1] for p in tmp_path.iterdir())
    assert files == ["result.glb", "result.png"]
    glb = next(tmp_path.glob("*-result.glb"))
    assert GLTF2.load_from_bytes(glb.read_bytes()).asset.version == "2.0"
    out = capsys.readouterr().out
    assert "pushes recorded by the FCM stand-in: 2" in out
    assert out.count("completed") >= 2 and "done." in out


def test_watch_follows_a_job_to_the_end(stack: Any, api: httpx.Client) -> None:
    """``kiln watch JOB_ID`` prints live progress and exits 0 when the job completes."""
    job_id = api.post("/v1/jobs", json={"kind": "image", "prompt": "a blue orb"}).json()["jobId"]
    env = {**os.environ, **stack.client_env()}
    done = subprocess.run([sys.executable, "-m", "kiln_dev", "watch", job_id], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "100%  completed" in done.stdout
    assert "generations/" in done.stdout and "result.png" in done.stdout


def test_operator_cancels_and_retries_any_job(stack: Any, api: httpx.Client, services: Any) -> None:
    """``kiln jobs cancel|retry`` act on any owner's job with the API's transitions: a running
    job is canceled (and again: "already"), a canceled one cannot be retried (exit 1 with the
    reason), a failed one is pending again."""
    env = {**os.environ, **stack.client_env()}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kiln_dev", "jobs", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    job_id = api.post("/v1/jobs", json={"kind": "model", "prompt": "a slow grey arch"}).json()["jobId"]
    assert kiln("cancel", job_id).stdout.strip() == f"{job_id}: canceled"
    assert kiln("cancel", job_id).stdout.strip() == f"{job_id}: canceled (already)"
    refused = kiln("retry", job_id)
    assert refused.returncode == 1 and "Only a failed job can be retried" in refused.stdout
    failed = api.post("/v1/jobs", json={"kind": "image", "prompt": "a cup [fail:permanent]"}).json()["jobId"]
    wait_terminal(services, failed)
    retried = kiln("retry", failed)
    assert retried.returncode == 0 and retried.stdout.strip() == f"{failed}: pending again, published"
