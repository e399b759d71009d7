"""FCM adapter: the completion push, through firebase-admin's real messaging client.

The message (contract, docs/push.md) is one notification per job for Android, iOS and web:
title and body, data ``{type, jobId, kind, link}`` (``link`` from ``KILN_LINK_TEMPLATE``),
and the result's thumbnail as the notification image when there is one.

A device is addressed by its Firebase Installation ID (``fid``, what FCM's SDKs register
since late 2026) or by a legacy FCM registration token (``token``, deprecated but still
delivered; apps that have not switched yet). A device document carries one or the other.

Locally (``KILN_FCM_ENDPOINT``) the client's HTTP session is routed to an FCM HTTP v1
compatible server on 127.0.0.1; the message encoding, the error parsing and the
per-device results are firebase-admin's own.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import firebase_admin
import requests
from firebase_admin import _http_client, messaging
from firebase_admin import exceptions as fb_exc

from kiln import log
from kiln.core.job import Device, Job
from kiln.ports import PushResult

logger = log.get("push")

FCM_HOST = "https://fcm.googleapis.com"
MAX_BATCH = 500  # send_each's limit per call
#: Waits before sending again to devices FCM answered 429 QUOTA_EXCEEDED (after the SDK's
#: own Retry-After handling): FCM asks for backoff, and the job is done, so a little wait
#: in the worker costs nothing but an instance-second.
QUOTA_DELAYS = (1.0, 4.0)
#: The longest one Retry-After is waited out (FCM may ask for minutes: past this the SDK
#: sends again after this long, up to its 4 tries) and the time after which no quota round
#: starts: a push holds a worker, or a sweep of 120 s, for seconds, not minutes; a device
#: still over quota then misses this push (its address is kept).
RETRY_AFTER_MAX = 4.0
PUSH_SECONDS = 20.0


#: Android notification channel the app must create (``NotificationChannel``) before pushes
#: arrive; FCM falls back to a default channel when it does not exist.
ANDROID_CHANNEL_ID = "kiln_jobs"
#: Intent action of the activity that opens a job (an ``<intent-filter>`` in the app).
ANDROID_CLICK_ACTION = "OPEN_JOB"
#: iOS groups Kiln's notifications under this thread in Notification Center.
IOS_THREAD_ID = "kiln-jobs"


def build_message(job: Job, link_template: str) -> tuple[str, str, dict[str, str]]:
    """Title, body and data (contract, docs/push.md) of a job's completion or failure push."""
    noun = "3D model" if job.kind == "model" else "image"
    completed = job.status == "completed"
    link = link_template.replace("{jobId}", job.id)
    if completed:
        title, body = f"Your {noun} is ready", _short(job.prompt)
    else:
        error = job.error or {}
        title = f"Your {noun} could not be made"
        body = _short(str(error.get("message") or "Something went wrong."))
    data = {
        "type": "generation_completed" if completed else "generation_failed",
        "jobId": job.id,
        "kind": job.kind or "image",
        "link": link,
    }
    return title, body, data


def image_url(job: Job) -> str | None:
    """The picture a completed job's notification shows: its thumbnail, or the PNG itself."""
    if job.status != "completed":
        return None
    result = job.result or {}
    url = result.get("thumbnailUrl") or (result.get("downloadUrl") if job.kind == "image"
                                         else None)
    return str(url) if url else None


def fcm_message(device: Device, title: str, body: str, data: dict[str, str],
                image: str | None = None) -> messaging.Message:
    """The FCM message to one device, for every platform (the exact JSON is in docs/push.md).

    One job = one notification: Android ``collapse_key`` and ``tag``, APNs
    ``apns-collapse-id`` and web push ``tag`` are the job id (a batch's push:
    ``batch-{batchId}``), so a retried job's push replaces the earlier one. The tap target
    is ``data.link`` everywhere; web push also gets ``fcm_options.link`` when the link is
    an absolute HTTPS URL (FCM refuses others).
    """
    job_id = data.get("jobId") or f"batch-{data.get('batchId', '')}"  # (a batch's one push)
    link = data.get("link", "")
    return _addressed(
        device,
        notification=messaging.Notification(title=title, body=body, image=image),
        data=data,
        android=messaging.AndroidConfig(
            priority="high",
            collapse_key=job_id,
            notification=messaging.AndroidNotification(
                channel_id=ANDROID_CHANNEL_ID, click_action=ANDROID_CLICK_ACTION, tag=job_id,
            ),
        ),
        apns=messaging.APNSConfig(
            headers={"apns-priority": "10", "apns-push-type": "alert", "apns-collapse-id": job_id},
            payload=messaging.APNSPayload(aps=messaging.Aps(
                alert=messaging.ApsAlert(title=title, body=body),
                sound="default",
                thread_id=IOS_THREAD_ID,
                # A Notification Service Extension downloads the image before display.
                mutable_content=bool(image) or None,
            )),
            fcm_options=messaging.APNSFCMOptions(image=image) if image else None,
        ),
        webpush=messaging.WebpushConfig(
            headers={"Urgency": "high"},
            notification=messaging.WebpushNotification(tag=job_id, image=image),
            fcm_options=(messaging.WebpushFCMOptions(link=link) if link.startswith("https://")
                         else None),
        ),
    )


def _addressed(device: Device, **parts: Any) -> messaging.Message:
    if device.fid:
        return messaging.Message(fid=device.fid, **parts)
    # Registration tokens are deprecated (firebase-admin warns) but FCM still delivers to
    # them, and apps that have not moved to FIDs only have a token.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return messaging.Message(token=device.token, **parts)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _adapter(retry_after_max: float) -> requests.adapters.HTTPAdapter:
    """The route to FCM: the retry policy firebase-admin mounts (500/503 and answers with
    Retry-After sent again with backoff), each Retry-After waited out at most
    ``retry_after_max`` seconds (the SDK's own bound is six hours)."""
    return requests.adapters.HTTPAdapter(
        pool_connections=100, pool_maxsize=100,
        max_retries=_http_client.DEFAULT_RETRY_CONFIG.new(retry_after_max=retry_after_max))


class _LoopbackAdapter(requests.adapters.HTTPAdapter):
    """Sends what firebase-admin addresses to fcm.googleapis.com to a local server, with
    the retry policy of :func:`_adapter`, so the local stack retries as production does."""

    def __init__(self, endpoint: str, retry_after_max: float) -> None:
        super().__init__(pool_connections=100, pool_maxsize=100,
                         max_retries=_adapter(retry_after_max).max_retries)
        self.endpoint = endpoint.rstrip("/")

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        assert request.url is not None
        request.url = self.endpoint + request.url[len(FCM_HOST):]
        return super().send(request, *args, **kwargs)


class FcmPush:
    """Sends a job's push to every device of its owner; reports the ones FCM calls dead.

    firebase-admin retries 500/503 and answers that carry Retry-After itself (each wait at
    most ``retry_after_max``); a device still over quota (429 QUOTA_EXCEEDED) is tried
    again here after each of ``quota_delays``, as FCM asks, while that starts within
    ``push_seconds``. Other failures are final for this push.
    """

    def __init__(self, app: firebase_admin.App, *, endpoint: str = "",
                 quota_delays: tuple[float, ...] = QUOTA_DELAYS,
                 retry_after_max: float = RETRY_AFTER_MAX,
                 push_seconds: float = PUSH_SECONDS) -> None:
        self.app = app
        self.quota_delays, self.push_seconds = quota_delays, push_seconds
        service = messaging._get_messaging_service(app)
        service._client.session.mount(FCM_HOST, _LoopbackAdapter(endpoint, retry_after_max)
                                      if endpoint else _adapter(retry_after_max))

    def send(
        self,
        devices: Sequence[Device],
        title: str,
        body: str,
        data: dict[str, str],
        *,
        image: str | None = None,
    ) -> PushResult:
        """Send to every device; report sent, failed and dead ones (to be forgotten)."""
        sent = failed = 0
        dead: list[str] = []
        mismatched: list[str] = []  # another project's addresses, or ours misconfigured
        pending = list(devices)
        delays = (0.0, *self.quota_delays)
        ends = time.monotonic() + self.push_seconds
        for round_, delay in enumerate(delays):
            time.sleep(delay)
            over_quota: list[Device] = []
            for start in range(0, len(pending), MAX_BATCH):
                batch = pending[start:start + MAX_BATCH]
                try:
                    messages = [fcm_message(device, title, body, data, image) for device in batch]
                    response = messaging.send_each(messages, app=self.app)
                except (fb_exc.FirebaseError, ValueError) as exc:
                    log.event(logger, "push batch failed", logging.WARNING, error=str(exc))
                    failed += len(batch)
                    continue
                for device, item in zip(batch, response.responses, strict=True):
                    if item.success:
                        sent += 1
                    elif isinstance(item.exception, fb_exc.ResourceExhaustedError):
                        over_quota.append(device)
                    else:
                        failed += 1
                        if _is_dead(item.exception):
                            dead.append(device.id)
                        elif isinstance(item.exception, messaging.SenderIdMismatchError):
                            mismatched.append(device.id)
                        log.event(logger, "push to device failed", logging.WARNING,
                                  deviceId=device.id, error=type(item.exception).__name__)
            pending = over_quota
            following = delays[round_ + 1] if round_ + 1 < len(delays) else None
            if pending and (following is None or time.monotonic() + following > ends):
                failed += len(pending)  # still over quota: they miss this push
                log.event(logger, "push to devices over quota given up", logging.WARNING,
                          devices=len(pending))
                break
            if not pending:
                break
        if mismatched and sent:  # others reached: those addresses are another project's
            dead += mismatched
        elif mismatched:  # none reached: the sender may be the one misconfigured
            log.event(logger, "every address refused as another project's (SENDER_ID_MISMATCH); "
                      "kept: check the FCM project and credentials", logging.ERROR,
                      devices=len(mismatched))
        return PushResult(sent, failed, dead)


def _is_dead(exc: BaseException | None) -> bool:
    """UNREGISTERED, or INVALID_ARGUMENT that says the FID or token itself is not valid.
    (SENDER_ID_MISMATCH is dead only beside an address that was reached: ``send``.)"""
    if isinstance(exc, messaging.UnregisteredError):
        return True
    if isinstance(exc, fb_exc.InvalidArgumentError):
        text = str(exc).lower()
        return any(words in text for words in ("registration token", "installation id",
                                                "not a valid fcm"))
    return False
