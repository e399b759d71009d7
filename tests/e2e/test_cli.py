"""The commands a new user runs: ``kiln demo``, ``kiln watch``, ``kiln jobs``; and how the
dev CLI and the stack find their services without touching ``os.environ``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pygltflib import GLTF2

from kiln.core.job import JobStatus
from kiln_dev import cli
from kiln_dev.stack import LocalStack, StackConfig
from support import wait_terminal

pytestmark = pytest.mark.e2e


def demo_command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "kiln_dev", "demo", "--image-prompt", "a yellow star",
            "--model-prompt", "a red cone"]


@pytest.mark.background(command=demo_command, env={"KILN_OFFLINE_IMAGE_SECONDS": "1",
                                                   "KILN_OFFLINE_MODEL_SECONDS": "2"})
def test_demo_completes_an_image_and_a_glb(background: Any) -> None:
    """``kiln demo`` (what ``make demo`` runs) on its own stack: both jobs complete, the
    files are saved under ./out, two pushes, exit 0."""
    returncode, out = background.wait(timeout=180)
    assert returncode == 0, out
    saved = background.workdir / "out"
    files = sorted(p.name.split("-", 1)[1] for p in saved.iterdir())
    assert files == ["result.glb", "result.png"]
    glb = next(saved.glob("*-result.glb"))
    assert GLTF2.load_from_bytes(glb.read_bytes()).asset.version == "2.0"
    assert "pushes recorded by the FCM stand-in: 2" in out
    assert out.count("completed") >= 2 and "done." in out


def test_watch_follows_a_job_to_the_end(stack: Any, api: httpx.Client) -> None:
    """``kiln watch JOB_ID`` prints live progress and exits 0 when the job completes."""
    answer = api.post("/v1/jobs", json={"kind": "image", "prompt": "a blue orb"})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["jobId"]
    env = {**os.environ, **stack.client_env()}
    done = subprocess.run([sys.executable, "-m", "kiln_dev", "watch", job_id], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "100%  completed" in done.stdout
    assert "generations/" in done.stdout and "result.png" in done.stdout


def test_operator_cancels_and_retries_any_job(stack: Any, api: httpx.Client, services: Any) -> None:
    """``kiln jobs cancel|retry`` act on any owner's job with the API's transitions: a running
    job is canceled (and again: "already"), a canceled one cannot be retried (exit 1 with the
    reason), ``show`` prints the public view and the typed server state, a failed one is
    pending again."""
    env = {**os.environ, **stack.client_env()}

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kiln_dev", "jobs", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    # A generation that never ends by itself: the cancel cannot lose a race to the end.
    job_id = api.post("/v1/jobs", json={"kind": "model", "prompt": "a grey arch [hang]"}).json()["jobId"]
    assert kiln("cancel", job_id).stdout.strip() == f"{job_id}: canceled"
    assert kiln("cancel", job_id).stdout.strip() == f"{job_id}: canceled (already)"
    refused = kiln("retry", job_id)
    assert refused.returncode == 1 and "Only a failed job can be retried" in refused.stdout
    failed = api.post("/v1/jobs", json={"kind": "image", "prompt": "a cup [fail:permanent]"}).json()["jobId"]
    ended = wait_terminal(services, failed)
    assert ended.status is JobStatus.FAILED and ended.server.notify is not None
    shown = kiln("show", failed)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["jobId"] == failed and view["status"] == "failed"
    assert view["error"]["code"] == "content_refused"
    assert view["server"]["notify"]["type"] == "generation_failed"  # the typed server state
    assert "_server" not in view
    retried = kiln("retry", failed)
    assert retried.returncode == 0 and retried.stdout.strip() == f"{failed}: pending again, published"


def test_stacks_build_services_from_their_own_settings(tmp_path: Path) -> None:
    """Given two stacks in one process (not started), when each builds its services, then
    each is bound to its own emulators and the process environment is left as it was."""
    before = dict(os.environ)
    first = LocalStack(StackConfig(workdir=tmp_path / "a"))
    second = LocalStack(StackConfig(workdir=tmp_path / "b", env={"KILN_MAX_ATTEMPTS": "7"}))
    try:
        one, two = first.services(), second.services(max_attempts=2)
        assert one.settings.firestore_emulator_host == first.client_env()["FIRESTORE_EMULATOR_HOST"]
        assert two.settings.firestore_emulator_host == second.client_env()["FIRESTORE_EMULATOR_HOST"]
        assert one.settings.pubsub_emulator_host != two.settings.pubsub_emulator_host
        assert one.settings.storage_emulator_host != two.settings.storage_emulator_host
        assert one.settings.local and two.settings.max_attempts == 2
        assert second.settings().max_attempts == 7
        assert one.firestore is not two.firestore
        assert dict(os.environ) == before
    finally:
        first.stop()
        second.stop()


def test_dev_cli_reads_the_dev_stack_without_touching_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given ``.kiln/dev.json`` of a running ``kiln dev`` and no emulator in the
    environment, when a command asks for its services, then they are bound to that stack
    and ``os.environ`` is unchanged; an emulator named in the environment wins."""
    stack = LocalStack(StackConfig(workdir=tmp_path / "stack"))
    monkeypatch.chdir(tmp_path)
    for name in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(name, raising=False)
    # The stack is described, not started: its emulator's port takes no connection, which
    # a command says at once (tests/unit/test_cli_errors.py); here only the binding counts.
    monkeypatch.setattr(cli, "_check_emulator", lambda host: None)
    try:
        cli.write_dev_file(stack)
        before = dict(os.environ)
        services = cli.dev_services()
        assert services.settings == stack.settings()
        assert cli.dev_services() is services  # built once per stack
        assert dict(os.environ) == before
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", "127.0.0.1:1")
        assert cli.dev_env() is None
    finally:
        stack.stop()


def test_operator_commands_use_the_services_they_are_given(
        stack: Any, services: Any, api: httpx.Client, capsys: pytest.CaptureFixture[str]) -> None:
    """Given a caller's services source, when ``kiln jobs list`` runs in process, then it
    reads that stack (nothing from ``.kiln/dev.json`` or ``kiln.compose``)."""
    job_id = api.post("/v1/jobs", json={"kind": "image", "prompt": "a listed cone"}).json()["jobId"]
    uid = services.store.get(job_id).uid
    calls: list[int] = []

    def source() -> Any:
        calls.append(1)
        return services

    assert cli.main(["jobs", "list", "--uid", uid], services=source) == 0
    assert job_id in capsys.readouterr().out and calls == [1]
