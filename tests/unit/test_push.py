"""The completion push as FCM receives it: firebase-admin's own encoding of Kiln's message,
sent through its real client to the local FCM HTTP v1 server, which records the JSON.

The expected messages here are the contract in docs/push.md.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import firebase_admin
import google.oauth2.credentials
import pytest
from firebase_admin import credentials

from kiln.adapters import fcm as push
from kiln.core.job import Device, Job
from kiln_dev.standins.fcm import FcmServer

THUMB = "https://firebasestorage.googleapis.com/v0/b/demo-kiln.appspot.com/o/generations%2Falice%2Fjob-1%2Fthumb.png?alt=media&token=t1"
PNG = "https://firebasestorage.googleapis.com/v0/b/demo-kiln.appspot.com/o/generations%2Falice%2Fjob-1%2Fresult.png?alt=media&token=t2"
_apps = itertools.count()


class _Token(credentials.Base):
    def get_credential(self) -> Any:
        return google.oauth2.credentials.Credentials(token="test-token")


@pytest.fixture
def fcm() -> Iterator[FcmServer]:
    server = FcmServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sender(fcm: FcmServer) -> Iterator[push.FcmPush]:
    app = firebase_admin.initialize_app(_Token(), {"projectId": "demo-kiln"},
                                        name=f"test-push-{next(_apps)}")
    try:
        yield push.FcmPush(app, endpoint=fcm.url, quota_delays=(0.2, 0.4))
    finally:
        firebase_admin.delete_app(app)


def as_job(job_id: str, doc: dict[str, Any]) -> Job:
    """A typed job from a document's fields (what the store would read)."""
    return Job.from_docs(job_id, doc)


def completed(kind: str = "image", **result: Any) -> dict[str, Any]:
    return {"uid": "alice", "kind": kind, "status": "completed", "prompt": "a ceramic fox",
            "result": {"path": f"generations/alice/job-1/result.{'png' if kind == 'image' else 'glb'}",
                       **result}}


def deliver(sender: push.FcmPush, fcm: FcmServer, job: dict[str, Any], template: str = "/jobs/{jobId}",
            devices: tuple[Device, ...] = (Device("phone", fid="fid-1"),)) -> list[dict[str, Any]]:
    title, body, data = push.build_message(as_job("job-1", job), template)
    result = sender.send(list(devices), title, body, data, image=push.image_url(as_job("job-1", job)))
    assert (result.sent, result.failed) == (len(devices), 0)
    return [m["message"] for m in fcm.messages]


#: The full message for a completed image job with a thumbnail (docs/push.md shows it).
EXPECTED_IMAGE = {
    "fid": "fid-1",
    "notification": {"title": "Your image is ready", "body": "a ceramic fox", "image": THUMB},
    "data": {"type": "generation_completed", "jobId": "job-1", "kind": "image", "link": "/jobs/job-1"},
    "android": {
        "priority": "high",
        "collapse_key": "job-1",
        "notification": {"channel_id": "kiln_jobs", "click_action": "OPEN_JOB", "tag": "job-1"},
    },
    "apns": {
        "headers": {"apns-priority": "10", "apns-push-type": "alert", "apns-collapse-id": "job-1"},
        "payload": {"aps": {
            "alert": {"title": "Your image is ready", "body": "a ceramic fox"},
            "sound": "default",
            "thread-id": "kiln-jobs",
            "mutable-content": 1,
        }},
        "fcm_options": {"image": THUMB},
    },
    "webpush": {
        "headers": {"Urgency": "high"},
        "notification": {"tag": "job-1", "image": THUMB},
    },
}


def test_completed_image_job_message(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given a completed image job with a thumbnail, when its push is sent, then FCM receives
    exactly the documented message: data with the link, Android channel/high priority/
    collapse key/tag, APNs alert with mutable-content and the thumbnail, web push tag."""
    [message] = deliver(sender, fcm, completed(downloadUrl=PNG, thumbnailUrl=THUMB))
    assert message == EXPECTED_IMAGE


def test_image_without_thumbnail_shows_the_png(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given a completed image job without a thumbnail, then the notification image is the PNG."""
    [message] = deliver(sender, fcm, completed(downloadUrl=PNG))
    assert message["notification"]["image"] == PNG
    assert message["apns"]["fcm_options"] == {"image": PNG}


def test_model_without_thumbnail_has_no_image(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given a completed GLB job without a thumbnail, then there is no image anywhere and no
    mutable-content (nothing for a Notification Service Extension to fetch); a GLB is never
    used as an image."""
    [message] = deliver(sender, fcm, completed("model", downloadUrl="https://x/result.glb"))
    expected = copy.deepcopy(EXPECTED_IMAGE)
    expected["notification"] = {"title": "Your 3D model is ready", "body": "a ceramic fox"}
    expected["data"]["kind"] = "model"
    expected["apns"]["payload"]["aps"] = {
        "alert": {"title": "Your 3D model is ready", "body": "a ceramic fox"},
        "sound": "default", "thread-id": "kiln-jobs"}
    del expected["apns"]["fcm_options"]
    expected["webpush"]["notification"] = {"tag": "job-1"}
    assert message == expected


def test_model_with_thumbnail(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given a completed GLB job with a thumbnail, then the thumbnail is the image."""
    [message] = deliver(sender, fcm, completed("model", downloadUrl="https://x/r.glb", thumbnailUrl=THUMB))
    assert message["notification"]["image"] == THUMB
    assert message["apns"]["payload"]["aps"]["mutable-content"] == 1


def test_failed_job_message(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given a failed job, then the push says so with the user-safe error message, its data
    type is generation_failed and it has no image."""
    job = {"kind": "model", "status": "failed", "prompt": "a fox",
           "error": {"code": "content_refused", "message": "The provider refused this prompt.",
                     "retryable": False}}
    [message] = deliver(sender, fcm, job)
    assert message["notification"] == {"title": "Your 3D model could not be made",
                                       "body": "The provider refused this prompt."}
    assert message["data"] == {"type": "generation_failed", "jobId": "job-1", "kind": "model",
                               "link": "/jobs/job-1"}
    assert "fcm_options" not in message["apns"]


@pytest.mark.parametrize(("template", "link", "web_link"), [
    ("/jobs/{jobId}", "/jobs/job-1", None),
    ("/ai/{jobId}", "/ai/job-1", None),
    ("myapp://generations/{jobId}", "myapp://generations/job-1", None),
    ("https://app.example.com/jobs/{jobId}", "https://app.example.com/jobs/job-1",
     "https://app.example.com/jobs/job-1"),
])
def test_link_template(sender: push.FcmPush, fcm: FcmServer, template: str, link: str,
                       web_link: str | None) -> None:
    """Given a KILN_LINK_TEMPLATE, then data.link is that template with the job id; web push
    gets fcm_options.link only for an absolute HTTPS link (FCM's requirement)."""
    [message] = deliver(sender, fcm, completed(downloadUrl=PNG), template)
    assert message["data"]["link"] == link
    assert message["webpush"].get("fcm_options") == ({"link": web_link} if web_link else None)


def test_every_device_gets_the_same_message(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given three devices, then each FID gets the same message (one send per device)."""
    devices = tuple(Device(f"d-{x}", fid=x) for x in ("a", "b", "c"))
    messages = deliver(sender, fcm, completed(downloadUrl=PNG), devices=devices)
    # firebase-admin sends the per-device requests concurrently: arrival order varies.
    assert sorted(m.pop("fid") for m in messages) == ["a", "b", "c"]
    assert messages[0] == messages[1] == messages[2]


def test_a_batchs_one_push_reaches_the_device(sender: push.FcmPush, fcm: FcmServer) -> None:
    """A batch's push carries no jobId (its data is the batch's): it is sent, collapsed
    under the batch, not dropped by a KeyError that no retry would ever repair."""
    data = {"type": "batch_completed", "batchId": "b123", "total": "3", "completed": "3"}
    result = sender.send([Device("phone", fid="fid-1")], "Your batch is ready",
                         "3 of 3 finished.", data)
    assert (result.sent, result.failed) == (1, 0)
    (message,) = fcm.messages
    sent = message["message"]
    assert sent["data"] == data and sent["android"]["collapse_key"] == "batch-b123"


def test_legacy_token_devices_get_the_same_message(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given one device on an FID and one still on a registration token, then the token device
    gets the same message addressed by ``token`` (deprecated by FCM, still delivered), and
    firebase-admin's deprecation warning stays inside Kiln."""
    devices = (Device("new", fid="fid-1"), Device("old", token="tok-1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        messages = deliver(sender, fcm, completed(downloadUrl=PNG, thumbnailUrl=THUMB), devices=devices)
    by_target = {("fid", m.pop("fid")) if "fid" in m else ("token", m.pop("token")): m for m in messages}
    assert set(by_target) == {("fid", "fid-1"), ("token", "tok-1")}
    expected = {k: v for k, v in EXPECTED_IMAGE.items() if k != "fid"}
    assert by_target["fid", "fid-1"] == by_target["token", "tok-1"] == expected


@pytest.mark.parametrize(("doc", "device"), [
    ({"fid": "f", "platform": "ios"}, Device("d", fid="f")),
    ({"token": "t", "platform": "android"}, Device("d", token="t")),
    ({"fid": "f", "token": "t"}, Device("d", fid="f")),
    ({"fid": "", "token": "t"}, Device("d", token="t")),
    ({"platform": "web"}, None),
    ({"fid": 12, "token": None}, None),
])
def test_device_from_its_document(doc: dict[str, Any], device: Device | None) -> None:
    """Given a device document, then its address is the FID, else the token, else none."""
    assert Device.from_doc("d", doc) == device


def test_collapse_key_is_per_job() -> None:
    """Given two jobs, then their Android collapse keys, tags and APNs collapse ids differ,
    so one job's push never replaces another's."""
    keys = []
    for job_id in ("job-a", "job-b"):
        _t, _b, data = push.build_message(as_job(job_id, completed()), "/jobs/{jobId}")
        message = push.fcm_message(Device("d", fid="f"), "t", "b", data)
        assert message.android is not None and message.apns is not None
        keys.append((message.android.collapse_key, message.android.notification.tag,
                     message.apns.headers["apns-collapse-id"]))
    assert keys == [("job-a",) * 3, ("job-b",) * 3]


def test_long_prompt_is_shortened() -> None:
    """Given a 1000-character prompt, then the body is at most 120 characters (payload
    limit is 4 KB) and ends with an ellipsis."""
    _title, body, _data = push.build_message(as_job("j", {**completed(), "prompt": "x" * 1000}),
                                          "/jobs/{jobId}")
    assert len(body) == 120 and body.endswith("…")


@pytest.mark.parametrize(("job", "image"), [
    (completed(downloadUrl=PNG, thumbnailUrl=THUMB), THUMB),
    (completed(downloadUrl=PNG), PNG),
    (completed("model", downloadUrl="https://x/r.glb"), None),
    ({"kind": "image", "status": "failed", "result": None}, None),
    ({"kind": "image", "status": "completed", "result": None}, None),
])
def test_image_url(job: dict[str, Any], image: str | None) -> None:
    assert push.image_url(as_job("job-1", job)) == image


# --- FCM's transient refusals -------------------------------------------------------------

DATA = {"type": "generation_completed", "jobId": "job-1", "kind": "image", "link": "/jobs/job-1"}


def attempts(fcm: FcmServer, address: str) -> list[tuple[str | None, float]]:
    return [(code, at) for to, code, at in fcm.attempts if to == address]


@pytest.mark.parametrize("error", ["UNAVAILABLE", "INTERNAL"])
def test_unavailable_and_internal_are_retried_with_backoff(sender: push.FcmPush, fcm: FcmServer,
                                                           error: str) -> None:
    """Given FCM answering 503 UNAVAILABLE (or 500 INTERNAL) twice, then firebase-admin's
    own retry policy (kept by the loopback route) sends again with backoff and the device
    gets exactly one push."""
    fcm.fail("fid-1", error, times=2)
    result = sender.send([Device("phone", fid="fid-1")], "t", "b", DATA)
    assert (result.sent, result.failed, result.dead_devices) == (1, 0, [])
    tried = attempts(fcm, "fid-1")
    assert [code for code, _at in tried] == [error, error, None]
    assert tried[2][1] - tried[1][1] >= 0.9  # urllib3 backoff: 0 s, then 1 s
    assert len(fcm.messages) == 1


def test_a_device_failing_two_sends_in_three_gets_every_push_once(sender: push.FcmPush,
                                                                   fcm: FcmServer) -> None:
    """Given FCM answering UNAVAILABLE, UNAVAILABLE, then success, over and over (the chaos
    suite's flaky device), then each of two pushes arrives exactly once, after retries."""
    fcm.fail("fid-1", "UNAVAILABLE", times=2, repeat=True)
    for _ in range(2):
        result = sender.send([Device("phone", fid="fid-1")], "t", "b", DATA)
        assert (result.sent, result.failed) == (1, 0)
    assert [code for code, _at in attempts(fcm, "fid-1")] == ["UNAVAILABLE", "UNAVAILABLE", None] * 2
    assert len(fcm.messages) == 2


def test_quota_exceeded_with_retry_after_is_waited_out(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given 429 QUOTA_EXCEEDED with Retry-After: 1, then the send is repeated after that
    second and succeeds."""
    fcm.fail("fid-1", "QUOTA_EXCEEDED", times=1, retry_after=1)
    result = sender.send([Device("phone", fid="fid-1")], "t", "b", DATA)
    assert (result.sent, result.failed) == (1, 0)
    (first, at1), (second, at2) = attempts(fcm, "fid-1")
    assert (first, second) == ("QUOTA_EXCEEDED", None) and at2 - at1 >= 1.0


def test_quota_exceeded_without_retry_after_is_retried_by_kiln(sender: push.FcmPush,
                                                               fcm: FcmServer) -> None:
    """Given 429 QUOTA_EXCEEDED without Retry-After (the SDK does not retry it), then Kiln
    tries that device again after its quota delays, and only that device."""
    fcm.fail("fid-1", "QUOTA_EXCEEDED", times=2)
    result = sender.send([Device("phone", fid="fid-1"), Device("tablet", fid="fid-2")],
                         "t", "b", DATA)
    assert (result.sent, result.failed) == (2, 0)
    assert [code for code, _at in attempts(fcm, "fid-1")] == ["QUOTA_EXCEEDED"] * 2 + [None]
    assert len(attempts(fcm, "fid-2")) == 1


def test_a_long_retry_after_never_holds_the_push_for_minutes(sender: push.FcmPush,
                                                             fcm: FcmServer) -> None:
    """Given a device over quota on every try, each answer asking for 30 s, then each
    Retry-After is waited out at most ``retry_after_max`` (the SDK's own bound is six
    hours), and no quota round starts past ``push_seconds``: the device is counted failed
    (its address kept) after the SDK's 1 + 4 tries, within seconds, not 125 s."""
    fcm.fail("fid-1", "QUOTA_EXCEEDED", retry_after=30)
    bounded = push.FcmPush(sender.app, endpoint=fcm.url, quota_delays=(0.2, 0.4),
                           retry_after_max=0.1, push_seconds=0.3)
    result = bounded.send([Device("phone", fid="fid-1")], "t", "b", DATA)
    assert (result.sent, result.failed, result.dead_devices) == (0, 1, [])
    tried = [at for _code, at in attempts(fcm, "fid-1")]
    assert len(tried) == 5 and tried[-1] - tried[0] < 5.0


def test_quota_exceeded_for_good_fails_without_forgetting_the_device(sender: push.FcmPush,
                                                                     fcm: FcmServer) -> None:
    """Given a device over quota on every try, then it is tried 1 + len(quota_delays) times,
    counted failed, and not reported dead (its address is fine)."""
    fcm.fail("fid-1", "QUOTA_EXCEEDED")
    result = sender.send([Device("phone", fid="fid-1")], "t", "b", DATA)
    assert (result.sent, result.failed, result.dead_devices) == (0, 1, [])
    assert len(attempts(fcm, "fid-1")) == 3


def test_another_projects_address_is_dead_beside_one_reached(sender: push.FcmPush,
                                                               fcm: FcmServer) -> None:
    """Given SENDER_ID_MISMATCH for one device while another is reached, then it is a
    token of another Firebase project: reported dead (it would fail every push). Given it
    for every device, the sender may be the one misconfigured: none is deleted."""
    fcm.fail("fid-1", "SENDER_ID_MISMATCH", repeat=True)
    result = sender.send([Device("old", fid="fid-1"), Device("phone", fid="fid-2")],
                         "t", "b", DATA)
    assert (result.sent, result.failed, result.dead_devices) == (1, 1, ["old"])
    assert len(attempts(fcm, "fid-1")) == 1
    fcm.fail("fid-3", "SENDER_ID_MISMATCH", repeat=True)
    result = sender.send([Device("old", fid="fid-1"), Device("tablet", fid="fid-3")],
                         "t", "b", DATA)
    assert (result.sent, result.failed, result.dead_devices) == (0, 2, [])


def test_unregistered_is_not_retried(sender: push.FcmPush, fcm: FcmServer) -> None:
    """Given UNREGISTERED, then there is one attempt and the device is reported dead."""
    fcm.fail("fid-1", "UNREGISTERED")
    result = sender.send([Device("phone", fid="fid-1")], "t", "b", DATA)
    assert (result.sent, result.failed, result.dead_devices) == (0, 1, ["phone"])
    assert len(attempts(fcm, "fid-1")) == 1
