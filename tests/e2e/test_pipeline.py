"""End to end over HTTP: ingress → Pub/Sub push → worker → Firestore, Storage, FCM.

Everything runs for real on the local stack; the tests look only at what a user or an
app could see: HTTP answers, the job document, the bucket, the pushes FCM received.
"""

from __future__ import annotations

import io
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from pygltflib import GLTF2

from kiln.core.job import Device
from support import wait_for, wait_terminal

pytestmark = pytest.mark.e2e


def submit(api: httpx.Client, kind: str, prompt: str, **headers: str) -> str:
    response = api.post("/v1/jobs", json={"kind": kind, "prompt": prompt}, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["jobId"])


def add_device(services: Any, uid: str, device: str, fid: str = "", token: str = "") -> None:
    address = {"fid": fid} if fid else {"token": token}
    services.firestore.collection("users").document(uid).collection("devices").document(
        device).set({**address, "platform": "android"})


def pushes_for(fcm: Any, job_id: str) -> list[dict[str, Any]]:
    return [m["message"] for m in fcm.messages if m["message"]["data"].get("jobId") == job_id]


def test_image_job_completes_with_file_and_one_push(api: httpx.Client, services: Any, fcm: Any,
                                                    uid: str) -> None:
    """An image job ends completed, its PNG is in storage, and exactly one push went out."""
    add_device(services, uid, "phone", fid=f"fid-{uid}")
    job_id = submit(api, "image", "a red sphere")
    job = wait_terminal(services, job_id)
    assert job.status == "completed" and job.progress == 100 and job.error is None
    result = job.result
    assert result["path"] == f"generations/{uid}/{job_id}/result.png"
    assert result["contentType"] == "image/png"
    data = services.blobs.read(result["path"])
    assert len(data) == result["bytes"]
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (512, 512)
    assert services.blobs.exists(result["thumbnailPath"])
    assert job.started_at <= job.completed_at
    pushes = wait_for(lambda: pushes_for(fcm, job_id), what="push")
    assert len(pushes) == 1
    assert pushes[0]["fid"] == f"fid-{uid}"
    assert pushes[0]["data"] == {"type": "generation_completed", "jobId": job_id,
                                 "kind": "image", "link": f"/jobs/{job_id}"}
    assert pushes[0]["notification"]["title"]
    over_http = api.get(f"/v1/jobs/{job_id}").json()
    assert over_http["status"] == "completed" and over_http["result"]["sha256"] == result["sha256"]


def test_the_ingress_serves_on_grpcs_older_client_path(stack: Any) -> None:
    """Given the local stack, when reading the ingress's serving process, then it runs with
    the GRPC_EXPERIMENTS the Terraform gives it (gRPC reads it only at import, so it must be
    in the process's environment from the start)."""
    from kiln.settings import INGRESS_GRPC_EXPERIMENTS

    (pid,) = stack.worker_processes("ingress")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"GRPC_EXPERIMENTS={INGRESS_GRPC_EXPERIMENTS}".encode() in environ


def test_model_job_stores_a_valid_glb(api: httpx.Client, services: Any) -> None:
    """A model job's result is a glTF 2.0 binary with a mesh, stored as model/gltf-binary."""
    job_id = submit(api, "model", "a blue cube")
    job = wait_terminal(services, job_id)
    assert job.status == "completed", job.error
    assert job.result["contentType"] == "model/gltf-binary"
    assert job.result["path"].endswith(f"/{job_id}/result.glb")
    glb = services.blobs.read(job.result["path"])
    assert glb[:4] == b"glTF"
    gltf = GLTF2.load_from_bytes(glb)
    assert gltf.asset.version == "2.0" and len(gltf.meshes) >= 1
    blob = services.blobs.bucket.get_blob(job.result["path"])
    assert blob.content_type == "model/gltf-binary"
    assert job.provenance["provider"] == "offline"


def test_progress_is_live_monotonic_and_coalesced(api: httpx.Client, services: Any) -> None:
    """A snapshot listener sees progress rise (never fall) in a few coalesced writes."""
    job_id = submit(api, "model", "a golden torus")
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def on_snapshot(docs: list[Any], _changes: Any, _time: Any) -> None:
        for doc in docs:
            d = doc.to_dict() or {}
            seen.append((d.get("status"), int(d.get("progress") or 0)))
            if d.get("status") in ("completed", "failed"):
                done.set()

    watch = services.firestore.collection("jobs").document(job_id).on_snapshot(on_snapshot)
    assert done.wait(45)
    watch.unsubscribe()
    progress = [p for status, p in seen if status == "processing"]
    assert progress == sorted(progress), progress
    assert len(set(progress)) >= 2
    # 1.5 s of generation at ≤1 write per 0.3 s: a handful of writes, not one per step.
    assert len(seen) <= 16, seen
    assert seen[-1] == ("completed", 100)


def test_duplicate_deliveries_do_nothing_harmful(api: httpx.Client, services: Any, fcm: Any,
                                                 uid: str) -> None:
    """The same message delivered 4 times (during and after the run): one attempt, one push."""
    add_device(services, uid, "phone", fid=f"fid-{uid}")
    job_id = submit(api, "model", "a silver cylinder")
    wait_for(lambda: services.store.get(job_id).status == "processing", what="processing")
    for _ in range(3):
        services.queue.publish(job_id, reason="duplicate")
    job = wait_terminal(services, job_id)
    first_sha = job.result["sha256"]
    services.queue.publish(job_id, reason="duplicate-after")
    wait_for(lambda: len(pushes_for(fcm, job_id)) >= 1, what="push")
    # Give the late duplicate time to be delivered and ignored.
    wait_for(lambda: (services.store.get(job_id).server.notify or {}).get("state") == "sent",
             what="notify sent")
    after = services.store.get(job_id)
    assert after.status == "completed" and after.attempts == 1
    assert after.result["sha256"] == first_sha
    assert len(pushes_for(fcm, job_id)) == 1


def test_idempotency_key_replays_the_same_job(api: httpx.Client, services: Any, fcm: Any,
                                              uid: str) -> None:
    """Same Idempotency-Key → the same job id, no second job; a different body → 422."""
    add_device(services, uid, "phone", fid=f"fid-{uid}")
    key = f"req-{uuid.uuid4().hex}"
    body = {"kind": "image", "prompt": "a pink cube"}
    first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    second = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 202
    assert first.json()["jobId"] == second.json()["jobId"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    misuse = api.post("/v1/jobs", json={"kind": "image", "prompt": "other"},
                      headers={"Idempotency-Key": key})
    assert misuse.status_code == 422
    assert misuse.json()["error"]["code"] == "idempotency_key_reused"
    job_id = first.json()["jobId"]
    wait_terminal(services, job_id)
    assert [j.id for j in services.store.find(uid=uid)] == [job_id]
    wait_for(lambda: pushes_for(fcm, job_id), what="push")
    assert len(pushes_for(fcm, job_id)) == 1


def test_generator_failure_fails_with_readable_reason_and_one_failure_push(
        api: httpx.Client, services: Any, fcm: Any, uid: str) -> None:
    """A permanent provider error → failed (coded, readable), a failure push, no result file."""
    add_device(services, uid, "phone", fid=f"fid-{uid}")
    job_id = submit(api, "image", "something [fail:permanent]")
    job = wait_terminal(services, job_id)
    assert job.status == "failed" and job.result is None
    assert job.error["code"] == "content_refused"
    assert job.error["retryable"] is False and "refused" in job.error["message"]
    assert job.attempts == 1
    pushes = wait_for(lambda: pushes_for(fcm, job_id), what="failure push")
    assert [p["data"]["type"] for p in pushes] == ["generation_failed"]
    assert services.blobs.list(f"generations/{uid}/{job_id}/") == []


def test_retryable_failure_retries_then_fails_once(api: httpx.Client, services: Any, fcm: Any,
                                                   uid: str) -> None:
    """A provider that keeps failing is retried up to the attempt limit, then failed once."""
    add_device(services, uid, "phone", fid=f"fid-{uid}")
    job_id = submit(api, "image", "again [fail:retryable]")
    job = wait_terminal(services, job_id, timeout=60)
    assert job.status == "failed" and job.attempts == 3
    assert job.error["code"] == "provider_unavailable"
    assert "3 attempts" in job.error["message"]
    wait_for(lambda: pushes_for(fcm, job_id), what="failure push")
    assert [p["data"]["type"] for p in pushes_for(fcm, job_id)] == ["generation_failed"]


def test_unregistered_devices_are_removed(api: httpx.Client, services: Any, fcm: Any,
                                          uid: str) -> None:
    """FCM answers UNREGISTERED for an FID and a legacy token: those devices are deleted, the
    live one (a legacy token device) notified."""
    add_device(services, uid, "old-phone", fid=f"gone-{uid}")
    add_device(services, uid, "old-tablet", token=f"gone-tok-{uid}")
    add_device(services, uid, "new-phone", token=f"live-{uid}")
    fcm.fail(f"gone-{uid}", "UNREGISTERED")
    fcm.fail(f"gone-tok-{uid}", "UNREGISTERED")
    job_id = submit(api, "image", "a teal ring")
    wait_terminal(services, job_id)
    wait_for(lambda: services.devices.devices(uid) == [Device("new-phone", token=f"live-{uid}")],
             what="dead devices removed")
    assert [p["token"] for p in pushes_for(fcm, job_id)] == [f"live-{uid}"]


def test_cancel_and_retry_through_the_api(api: httpx.Client, services: Any) -> None:
    """Cancel a running job (ends canceled, no result); retry refused on it with 409."""
    job_id = submit(api, "model", "a long brown tower")
    wait_for(lambda: services.store.get(job_id).status == "processing", what="processing")
    canceled = api.post(f"/v1/jobs/{job_id}:cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert api.post(f"/v1/jobs/{job_id}:cancel").status_code == 200  # idempotent
    refused = api.post(f"/v1/jobs/{job_id}:retry")
    assert refused.status_code == 409 and "canceled" in refused.json()["error"]["message"]
    job = services.store.get(job_id)
    assert job.status == "canceled" and job.result is None


BAD_BODIES = [
    (b"{not json", 400, "invalid_json"),
    (b'{"kind": "image", "prompt": "a cube", "prompt": "a sphere"}', 400, "duplicate_key"),
    (b'{"kind": "image", "prompt": 5}', 400, "invalid_prompt"),
    (b'{"kind": "image", "prompt": ""}', 400, "invalid_prompt"),
    (b'{"kind": "image", "prompt": "' + b"x" * 1001 + b'"}', 400, "invalid_prompt"),
    (b'{"kind": "sound", "prompt": "x"}', 400, "invalid_kind"),
    (b'{"kind": "image", "prompt": "x", "options": {"fps": 3}}', 400, "invalid_options"),
    (b'{"kind": "image", "prompt": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_BODIES)
def test_bad_input_is_a_4xx_and_creates_nothing(api: httpx.Client, services: Any, uid: str,
                                                body: bytes, status: int, code: str) -> None:
    """Malformed, mistyped, empty, over-long, unknown or oversized input → 4xx, no job."""
    response = api.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
    assert list(services.store.find(uid=uid)) == []


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer not.a.jwt",
                                    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."])
def test_missing_or_invalid_token_is_401(stack: Any, header: str | None) -> None:
    """No token, a wrong scheme or a token for no project → 401 in the error envelope."""
    headers = {"Authorization": header} if header else {}
    response = httpx.post(f"{stack.ingress_url}/v1/jobs", headers=headers,
                          json={"kind": "image", "prompt": "x"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
