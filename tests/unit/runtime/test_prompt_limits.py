"""A prompt longer than the configured provider takes is refused at submit (a 400 before
a job exists), not failed by the worker after its admission."""

from __future__ import annotations

from typing import Any

import flask
from rig import Rig, build_rig

from kiln.http.api import handle


def submit(rig: Rig, kind: str, prompt: str) -> tuple[int, dict[str, Any]]:
    with flask.Flask(__name__).test_request_context(
            "/v1/jobs", method="POST", json={"kind": kind, "prompt": prompt},
            headers={"Authorization": "Bearer uid:alice"}):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json()


def batch(rig: Rig, prompts: list[str]) -> tuple[int, dict[str, Any]]:
    items = [{"kind": "model", "prompt": prompt} for prompt in prompts]
    with flask.Flask(__name__).test_request_context(
            "/v1/batches", method="POST", json={"items": items},
            headers={"Authorization": "Bearer uid:alice"}):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json()


def test_a_model_prompt_over_meshys_limit_is_400_when_meshy_makes_models() -> None:
    """Given Meshy making models (prompts of up to 600 characters), when a model job with
    601 is submitted, then it is a 400 naming the limit and nothing is created; 600 is
    accepted, and so is a 601-character image prompt (another provider makes images)."""
    rig = build_rig(model_provider="meshy")
    status, body = submit(rig, "model", "a" * 601)
    assert (status, body["error"]["code"]) == (400, "prompt_too_long")
    assert "up to 600 characters" in body["error"]["message"]
    assert rig.store.find(uid="alice") == []
    assert submit(rig, "model", "a" * 600)[0] == 202
    assert submit(rig, "image", "a" * 601)[0] == 202


def test_a_batch_names_the_item_whose_prompt_is_too_long() -> None:
    rig = build_rig(model_provider="meshy")
    status, body = batch(rig, ["a lamp", "b" * 700])
    assert (status, body["error"]["code"]) == (400, "prompt_too_long")
    assert body["error"]["message"].startswith("items[1].prompt: ")
    assert rig.store.find(uid="alice") == []


def test_kilns_own_limit_holds_for_a_provider_without_one() -> None:
    rig = build_rig()  # the offline generator: Kiln's 1000 characters
    assert submit(rig, "model", "a" * 1000)[0] == 202
