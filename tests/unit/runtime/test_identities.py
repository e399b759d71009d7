"""Which signed-in users may act through the app API (issue 15, item 12): a uid that
cannot be a path segment is refused at the edge (it used to fail the job ``internal``
after three attempts), and an app token never acts as another channel's owner."""

from __future__ import annotations

from typing import Any

import flask
import pytest
from rig import Rig

from kiln.http.api import handle


def call(rig: Rig, uid: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    with flask.Flask(__name__).test_request_context(
            path, method=method, json=body, headers={"Authorization": f"Bearer uid:{uid}"}):
        response = handle(flask.request, rig.services)
    return response.status_code, response.get_json()


CUBE = {"kind": "image", "prompt": "a red cube"}


@pytest.mark.parametrize("uid", ["a/b", "/", "..", ".", "x..y", "a\x00b", "tab\there", "\x7f",
                                 "__name__", "u" * 129, " ", "ab\u202ec", "a\u200bb"])
def test_a_uid_that_cannot_name_a_path_is_refused_at_the_edge(rig: Rig, uid: str) -> None:
    for method, path, body in [("POST", "/v1/jobs", CUBE), ("GET", "/v1/jobs", None),
                               ("GET", "/v1/jobs/abcdefgh12", None)]:
        status, answer = call(rig, uid, method, path, body)
        assert (status, answer["error"]["code"]) == (403, "unsupported_uid")
    assert rig.store.docs == {}


@pytest.mark.parametrize("uid", ["alice", "a.b", "用户", "u" * 128, "google-oauth2|123"])
def test_ordinary_uids_act(rig: Rig, uid: str) -> None:
    assert call(rig, uid, "POST", "/v1/jobs", CUBE)[0] == 202


@pytest.mark.parametrize("owner", ["telegram:4242", "api:partner"])
def test_an_app_token_cannot_act_as_another_channels_owner(rig: Rig, owner: str) -> None:
    # given a chat's job, owned by telegram:4242
    job_id = rig.submit(uid=owner, channel="telegram")
    # when an app user whose uid is that same string lists, reads, cancels or creates
    for method, path, body in [("GET", "/v1/jobs", None), ("GET", f"/v1/jobs/{job_id}", None),
                               ("POST", f"/v1/jobs/{job_id}:cancel", None),
                               ("POST", "/v1/jobs", CUBE)]:
        status, answer = call(rig, owner, method, path, body)
        # then each is refused, and the chat's job is untouched
        assert (status, answer["error"]["code"]) == (403, "reserved_uid"), (method, path)
    assert [j.id for j in rig.store.find(uid=owner)] == [job_id]
    assert rig.job(job_id).status.value == "pending"
