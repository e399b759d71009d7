"""FCM adapter: the completion push, through firebase-admin's real messaging client.

Locally (``KILN_FCM_ENDPOINT``) the client's HTTP session is routed to an FCM HTTP v1
compatible server on 127.0.0.1; the message encoding, the error parsing and the
per-token results are firebase-admin's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import firebase_admin
import requests
from firebase_admin import exceptions as fb_exc
from firebase_admin import messaging

from kiln import log

logger = log.get("push")

FCM_HOST = "https://fcm.googleapis.com"
MAX_TOKENS = 500  # send_each_for_multicast's limit per call


@dataclass(frozen=True)
class PushResult:
    sent: int = 0
    failed: int = 0
    dead_devices: list[str] = field(default_factory=list)


def build_message(job_id: str, job: Mapping[str, Any], link_template: str) -> tuple[
    str, str, dict[str, str]
]:
    """Title, body and data (contract) of a job's completion or failure push."""
    kind = str(job.get("kind", "image"))
    noun = "3D model" if kind == "model" else "image"
    completed = job.get("status") == "completed"
    link = link_template.replace("{jobId}", job_id)
    if completed:
        title, body = f"Your {noun} is ready", _short(str(job.get("prompt", "")))
    else:
        error = job.get("error") or {}
        title = f"Your {noun} could not be made"
        body = _short(str(error.get("message") or "Something went wrong."))
    data = {
        "type": "generation_completed" if completed else "generation_failed",
        "jobId": job_id,
        "kind": kind,
        "link": link,
    }
    return title, body, data


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _LoopbackAdapter(requests.adapters.HTTPAdapter):
    """Sends what firebase-admin addresses to fcm.googleapis.com to a local server."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.endpoint = endpoint.rstrip("/")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        assert request.url is not None
        request.url = self.endpoint + request.url[len(FCM_HOST):]
        return super().send(request, *args, **kwargs)


class FcmPush:
    """Sends a job's push to every device of its owner; drops tokens FCM calls dead."""

    def __init__(self, app: firebase_admin.App, *, endpoint: str = "") -> None:
        self.app = app
        if endpoint:
            service = messaging._get_messaging_service(app)
            service._client.session.mount(FCM_HOST, _LoopbackAdapter(endpoint))

    def send(
        self,
        tokens: list[tuple[str, str]],
        title: str,
        body: str,
        data: dict[str, str],
    ) -> PushResult:
        """Send to ``tokens`` ((deviceId, token) pairs); report sent, failed and dead ones."""
        sent = failed = 0
        dead: list[str] = []
        for start in range(0, len(tokens), MAX_TOKENS):
            batch = tokens[start:start + MAX_TOKENS]
            message = messaging.MulticastMessage(
                tokens=[token for _device, token in batch],
                notification=messaging.Notification(title=title, body=body),
                data=data,
                android=messaging.AndroidConfig(
                    priority="high",
                    collapse_key=data.get("jobId"),
                    notification=messaging.AndroidNotification(
                        channel_id="kiln_jobs", click_action="OPEN_JOB", tag=data.get("jobId")
                    ),
                ),
                apns=messaging.APNSConfig(
                    headers={"apns-priority": "10", "apns-collapse-id": data.get("jobId", "")},
                    payload=messaging.APNSPayload(
                        aps=messaging.Aps(sound="default", mutable_content=True,
                                          thread_id="kiln-jobs")
                    ),
                ),
            )
            try:
                response = messaging.send_each_for_multicast(message, app=self.app)
            except (fb_exc.FirebaseError, ValueError) as exc:
                log.event(logger, "push batch failed", logging.WARNING, error=str(exc))
                failed += len(batch)
                continue
            for (device_id, _token), item in zip(batch, response.responses, strict=True):
                if item.success:
                    sent += 1
                    continue
                failed += 1
                if _is_dead_token(item.exception):
                    dead.append(device_id)
                log.event(logger, "push to device failed", logging.WARNING, deviceId=device_id,
                          error=type(item.exception).__name__)
        return PushResult(sent, failed, dead)


def _is_dead_token(exc: BaseException | None) -> bool:
    """UNREGISTERED, or INVALID_ARGUMENT that says the token itself is not valid."""
    if isinstance(exc, messaging.UnregisteredError):
        return True
    if isinstance(exc, fb_exc.InvalidArgumentError):
        text = str(exc).lower()
        return "registration token" in text or "not a valid fcm" in text
    return False
