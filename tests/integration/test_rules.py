"""Firestore security rules (infra/firestore.rules) on the emulator: who may do what.

Driven over the Firestore REST API, as a client SDK would be: the emulator evaluates the
rules for ``Authorization: Bearer <unsigned JWT>`` (``sub``/``user_id`` = the user), for no
header (signed out), and skips them for ``Bearer owner`` (the admin SDK / server, which
bypasses rules in production too). Every collection × actor × operation is in the matrix,
including list queries that do not filter by owner (denied for everyone but the server).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kiln.adapters.firebase_auth import emulator_id_token
from kiln_dev.stack import REPO, LocalStack

RULES = REPO / "infra" / "firestore.rules"
ACTORS = ("owner", "other", "signed_out", "admin")


@dataclass
class World:
    """One fresh owner and their documents, seeded by the server (rules bypassed)."""

    client: httpx.Client
    project: str
    owner: str
    other: str
    job_id: str
    device_id: str

    @property
    def docs(self) -> str:
        return f"projects/{self.project}/databases/(default)/documents"

    def headers(self, actor: str) -> dict[str, str]:
        if actor == "admin":
            return {"Authorization": "Bearer owner"}
        if actor == "signed_out":
            return {}
        uid = self.owner if actor == "owner" else self.other
        return {"Authorization": f"Bearer {emulator_id_token(uid, self.project)}"}

    def get(self, actor: str, path: str) -> httpx.Response:
        return self.client.get(f"/v1/{self.docs}/{path}", headers=self.headers(actor))

    def query(self, actor: str, parent: str, collection: str, where: dict[str, Any] | None = None,
              all_descendants: bool = False) -> httpx.Response:
        structured: dict[str, Any] = {
            "from": [{"collectionId": collection, "allDescendants": all_descendants}]}
        if where:
            (field, value), = where.items()
            structured["where"] = {"fieldFilter": {
                "field": {"fieldPath": field}, "op": "EQUAL", "value": encode(value)}}
        url = f"/v1/{self.docs}{'/' + parent if parent else ''}:runQuery"
        return self.client.post(url, json={"structuredQuery": structured}, headers=self.headers(actor))

    def commit(self, actor: str, write: dict[str, Any]) -> httpx.Response:
        return self.client.post(f"/v1/{self.docs}:commit", json={"writes": [write]},
                                headers=self.headers(actor))

    def set(self, actor: str, path: str, fields: dict[str, Any], *, exists: bool | None = None,
            server_time: tuple[str, ...] = ()) -> httpx.Response:
        write: dict[str, Any] = {"update": {"name": f"{self.docs}/{path}",
                                            "fields": {k: encode(v) for k, v in fields.items()}}}
        if exists is not None:
            write["currentDocument"] = {"exists": exists}
        if server_time:
            write["updateTransforms"] = [{"fieldPath": f, "setToServerValue": "REQUEST_TIME"}
                                         for f in server_time]
        return self.commit(actor, write)

    def delete(self, actor: str, path: str) -> httpx.Response:
        return self.commit(actor, {"delete": f"{self.docs}/{path}"})


def encode(value: Any) -> dict[str, Any]:
    """A Python value as a Firestore REST ``Value``."""
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, dt.datetime):
        return {"timestampValue": value.isoformat().replace("+00:00", "Z")}
    if isinstance(value, dict):
        return {"mapValue": {"fields": {k: encode(v) for k, v in value.items()}}}
    raise TypeError(type(value))


def job_fields(uid: str, **changes: Any) -> dict[str, Any]:
    fields = {"uid": uid, "channel": "app", "kind": "image", "prompt": "a fox", "options": {},
              "status": "pending", "stage": "queued", "progress": 0, "attempts": 0,
              "error": None, "result": None, "createdAt": dt.datetime.now(dt.UTC)}
    return {**fields, **changes}


DEVICE = {"fid": "fid-1", "platform": "android"}
#: The rules are tried in a project of their own on the stack's emulator: the documents they
#: write (jobs Kiln never made, some without their server state) stay out of the stack's
#: sweeper and worker.
RULES_PROJECT = "demo-rules"
LEGACY_DEVICE = {"token": "fcm-token-1", "platform": "android"}


@pytest.fixture(scope="module")
def emulator(stack: LocalStack) -> Iterator[httpx.Client]:
    """A REST client for the Firestore emulator, running the rules file as it is now."""
    env = stack.client_env()
    with httpx.Client(base_url=f"http://{env['FIRESTORE_EMULATOR_HOST']}", timeout=10) as client:
        client.put(f"/emulator/v1/projects/{RULES_PROJECT}:securityRules",
                   json={"rules": {"files": [{"content": RULES.read_text()}]}}).raise_for_status()
        yield client


@pytest.fixture
def world(emulator: httpx.Client, stack: LocalStack) -> World:
    tag = uuid.uuid4().hex[:10]
    w = World(emulator, RULES_PROJECT, f"alice-{tag}", f"bob-{tag}", f"job-{tag}", "phone-1")
    for path, fields in [(f"jobs/{w.job_id}", job_fields(w.owner)),
                         (f"jobs/{w.job_id}/private/server",
                          {"leaseOwner": "host-1", "claimToken": "secret", "idempotencyKey": "k"}),
                         (f"jobs/{w.job_id}-bob", job_fields(w.other)),
                         (f"users/{w.owner}", {"name": "Alice"}),
                         (f"users/{w.owner}/devices/{w.device_id}",
                          {**DEVICE, "updatedAt": dt.datetime.now(dt.UTC)}),
                         (f"settings/{tag}", {"x": 1}),
                         (f"apiKeys/{tag}", {"tenant": "acme", "secretHash": "ab" * 32}),
                         (f"tenants/{tag}", {"plan": "pro", "allowJobWebhooks": True}),
                         (f"batches/{tag}", {"uid": w.owner, "count": 3}),
                         (f"webhookEndpoints/{tag}", {"tenant": "acme", "secret": "whsec_x"}),
                         (f"webhookDeliveries/{tag}", {"tenant": "acme", "state": "pending"}),
                         (f"waitingJobs/{tag}", {"reason": "running_limit"})]:
        w.set("admin", path, fields).raise_for_status()
    return w


def allowed(response: httpx.Response) -> bool:
    """200 = the rules allowed it; 403 = denied; anything else is a broken test."""
    assert response.status_code in (200, 403), (response.status_code, response.text)
    if response.status_code == 200 and response.headers.get("content-type", "").startswith(
            "application/json"):
        body = response.json()
        # runQuery streams its error inside a 200 in some emulator versions.
        if isinstance(body, list) and any("error" in item for item in body):
            return False
    return response.status_code == 200


def expect(actor: str, allowed_for: set[str]) -> bool:
    return actor in allowed_for


# --- jobs/{jobId}: read by the owner only, written by the server only -------------------------

@pytest.mark.parametrize("actor", ACTORS)
def test_job_get(world: World, actor: str) -> None:
    """Given alice's job, when each actor reads it, then only alice (and the server) may."""
    assert allowed(world.get(actor, f"jobs/{world.job_id}")) == expect(actor, {"owner", "admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_job_list_filtered_by_owner(world: World, actor: str) -> None:
    """Given a query for jobs where uid == alice, then only alice (and the server) may run it,
    and alice gets exactly her own job."""
    response = world.query(actor, "", "jobs", {"uid": world.owner})
    assert allowed(response) == expect(actor, {"owner", "admin"})
    if actor == "owner":
        names = [item["document"]["name"] for item in response.json() if "document" in item]
        assert [n.rsplit("/", 1)[1] for n in names] == [world.job_id]


@pytest.mark.parametrize("prefix", ["telegram:", "api:"])
def test_an_app_user_named_like_another_channels_owner_reads_nothing(world: World,
                                                                     prefix: str) -> None:
    """Given a chat's job (uid telegram:<chatId>), when a Firebase user whose uid is that
    same string reads or lists it, then it is denied (issue 15, item 12)."""
    owner = f"{prefix}{uuid.uuid4().int % 10**9}"
    job_id = f"chat-{uuid.uuid4().hex[:10]}"
    world.set("admin", f"jobs/{job_id}", job_fields(owner, channel="telegram")).raise_for_status()
    token = {"Authorization": f"Bearer {emulator_id_token(owner, world.project)}"}
    read = world.client.get(f"/v1/{world.docs}/jobs/{job_id}", headers=token)
    assert not allowed(read)
    assert allowed(world.get("admin", f"jobs/{job_id}"))


@pytest.mark.parametrize("actor", ACTORS)
def test_job_list_without_owner_filter_is_denied(world: World, actor: str) -> None:
    """Given a query over all jobs (no uid filter), then it is denied to every client: the
    rules cannot prove each result is the caller's."""
    assert allowed(world.query(actor, "", "jobs")) == expect(actor, {"admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_job_list_filtered_by_someone_else_is_denied(world: World, actor: str) -> None:
    """Given a query for bob's jobs, then alice cannot run it (only bob or the server)."""
    response = world.query(actor, "", "jobs", {"uid": world.other})
    assert allowed(response) == expect(actor, {"other", "admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_job_create(world: World, actor: str) -> None:
    """Given a well-formed job for the caller, when a client creates it, then it is denied:
    jobs are created by the HTTP API only."""
    uid = world.other if actor == "other" else world.owner
    response = world.set(actor, f"jobs/new-{uuid.uuid4().hex[:8]}", job_fields(uid), exists=False)
    assert allowed(response) == expect(actor, {"admin"})


@pytest.mark.parametrize("change", [
    {"status": "completed", "progress": 100},
    {"progress": 50},
    {"result": {"path": "generations/x/y/result.png"}},
    {"prompt": "edited"},
], ids=["status", "progress", "result", "prompt"])
@pytest.mark.parametrize("actor", ACTORS)
def test_job_update(world: World, actor: str, change: dict[str, Any]) -> None:
    """Given alice's job, when anyone but the server changes status, progress, the result or
    any other field, then it is denied, the owner included."""
    response = world.set(actor, f"jobs/{world.job_id}", job_fields(world.owner, **change), exists=True)
    assert allowed(response) == expect(actor, {"admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_job_delete(world: World, actor: str) -> None:
    """Given alice's job, when a client deletes it, then it is denied (the owner included)."""
    assert allowed(world.delete(actor, f"jobs/{world.job_id}")) == expect(actor, {"admin"})
    assert world.get("admin", f"jobs/{world.job_id}").status_code == (404 if actor == "admin" else 200)


# --- users/{uid}/devices/{deviceId}: the owner's own push addresses ------------------------

@pytest.mark.parametrize("actor", ACTORS)
def test_device_get(world: World, actor: str) -> None:
    path = f"users/{world.owner}/devices/{world.device_id}"
    assert allowed(world.get(actor, path)) == expect(actor, {"owner", "admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_device_list(world: World, actor: str) -> None:
    """Given alice's devices, when each actor lists users/alice/devices, then only alice may."""
    response = world.query(actor, f"users/{world.owner}", "devices")
    assert allowed(response) == expect(actor, {"owner", "admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_device_collection_group_query_is_denied(world: World, actor: str) -> None:
    """Given everyone's devices, when a client queries the devices collection group, then it
    is denied: tokens are never listed across users."""
    response = world.query(actor, "", "devices", all_descendants=True)
    assert allowed(response) == expect(actor, {"admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_device_create(world: World, actor: str) -> None:
    """Given a valid device {fid, platform, updatedAt: server time} under alice (and a legacy
    one with a registration token), then only alice may create it."""
    for device in (DEVICE, LEGACY_DEVICE):
        path = f"users/{world.owner}/devices/new-{uuid.uuid4().hex[:8]}"
        response = world.set(actor, path, device, exists=False, server_time=("updatedAt",))
        assert allowed(response) == expect(actor, {"owner", "admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_device_update(world: World, actor: str) -> None:
    """Given alice's device, when its address is refreshed (or moved from a token to an FID),
    then only alice may write it."""
    path = f"users/{world.owner}/devices/{world.device_id}"
    for device in ({"token": "fcm-token-2", "platform": "ios"}, {"fid": "fid-2", "platform": "ios"}):
        response = world.set(actor, path, device, exists=True, server_time=("updatedAt",))
        assert allowed(response) == expect(actor, {"owner", "admin"})


@pytest.mark.parametrize("actor", ACTORS)
def test_device_delete(world: World, actor: str) -> None:
    """Given alice's device, when it is unregistered (sign-out), then only alice may delete it."""
    path = f"users/{world.owner}/devices/{world.device_id}"
    assert allowed(world.delete(actor, path)) == expect(actor, {"owner", "admin"})


@pytest.mark.parametrize(("fields", "server_time"), [
    ({**DEVICE, "extra": "x"}, ("updatedAt",)),
    ({"fid": "fid-1", "platform": "windows"}, ("updatedAt",)),
    ({"fid": "", "platform": "android"}, ("updatedAt",)),
    ({"fid": "x" * 4097, "platform": "android"}, ("updatedAt",)),
    ({"fid": 12345, "platform": "android"}, ("updatedAt",)),
    ({"token": "", "platform": "android"}, ("updatedAt",)),
    ({"token": "x" * 4097, "platform": "android"}, ("updatedAt",)),
    ({"token": 12345, "platform": "android"}, ("updatedAt",)),
    ({"fid": "fid-1", "token": "fcm-token-1", "platform": "android"}, ("updatedAt",)),
    ({"platform": "android"}, ("updatedAt",)),
    (DEVICE, ()),
    ({**DEVICE, "updatedAt": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, ()),
], ids=["extra-field", "bad-platform", "empty-fid", "long-fid", "fid-not-string", "empty-token",
        "long-token", "token-not-string", "fid-and-token", "no-address", "no-updatedAt",
        "client-chosen-updatedAt"])
def test_device_fields_are_validated(world: World, fields: dict[str, Any],
                                     server_time: tuple[str, ...]) -> None:
    """Given alice writing her own device, when the document breaks the contract {fid or
    token (exactly one): non-empty string ≤ 4096, platform: android|ios|web, updatedAt: server
    time}, then it is denied, on create and on update."""
    new = f"users/{world.owner}/devices/new-{uuid.uuid4().hex[:8]}"
    assert not allowed(world.set("owner", new, fields, exists=False, server_time=server_time))
    old = f"users/{world.owner}/devices/{world.device_id}"
    assert not allowed(world.set("owner", old, fields, exists=True, server_time=server_time))


@pytest.mark.parametrize("platform", ["android", "ios", "web"])
def test_device_platforms(world: World, platform: str) -> None:
    """Given each supported platform, when alice registers a device, then it is allowed."""
    path = f"users/{world.owner}/devices/{platform}-{uuid.uuid4().hex[:8]}"
    assert allowed(world.set("owner", path, {"fid": "f", "platform": platform}, exists=False,
                             server_time=("updatedAt",)))


def test_device_under_another_user_is_denied(world: World) -> None:
    """Given bob, when he registers a valid device under alice's path, then it is denied
    (an address under someone else's uid would receive their pushes)."""
    path = f"users/{world.owner}/devices/bobs-phone"
    assert not allowed(world.set("other", path, DEVICE, exists=False, server_time=("updatedAt",)))


@pytest.mark.parametrize("prefix", ["telegram:", "api:"])
def test_a_user_named_like_another_channels_owner_registers_no_device(world: World,
                                                                       prefix: str) -> None:
    """Given a Firebase user whose uid is a chat's or a tenant's owner id, when it
    registers a device under its own uid, then it is denied: the device would receive
    that chat's or tenant's pushes (their prompts)."""
    lookalike = World(world.client, world.project, f"{prefix}{uuid.uuid4().hex[:8]}",
                      world.other, world.job_id, world.device_id)
    path = f"users/{lookalike.owner}/devices/phone"
    assert not allowed(lookalike.set("owner", path, DEVICE, exists=False,
                                     server_time=("updatedAt",)))
    assert not allowed(lookalike.get("owner", path))


# --- jobs/{jobId}/private/server: the server's alone, even for the job's owner ---------------

@pytest.mark.parametrize("actor", ACTORS)
def test_job_server_state_is_closed_to_every_client(world: World, actor: str) -> None:
    """Given alice's job's server state (lease owner, claim token, idempotency key), then
    no client — alice included — may read, list, create, update or delete it."""
    doc = f"jobs/{world.job_id}/private/server"
    server = {"admin"}
    assert allowed(world.get(actor, doc)) == expect(actor, server)
    assert allowed(world.query(actor, f"jobs/{world.job_id}", "private")) == expect(actor, server)
    assert allowed(world.query(actor, "", "private", all_descendants=True)) == expect(actor, server)
    assert allowed(world.set(actor, doc, {"leaseOwner": "me"}, exists=True)) == expect(actor, server)
    assert allowed(world.set(actor, f"jobs/{world.job_id}/private/n-{uuid.uuid4().hex[:6]}",
                             {"x": 1}, exists=False)) == expect(actor, server)
    assert allowed(world.delete(actor, doc)) == expect(actor, server)


# --- everything else: closed ---------------------------------------------------------------

@pytest.mark.parametrize("path", ["users/{owner}", "settings/{tag}", "apiKeys/{tag}",
                                  "tenants/{tag}", "batches/{tag}", "webhookEndpoints/{tag}",
                                  "webhookDeliveries/{tag}", "waitingJobs/{tag}"])
@pytest.mark.parametrize("actor", ACTORS)
def test_other_documents_are_closed(world: World, actor: str, path: str) -> None:
    """Given any document outside jobs and devices (the user's own profile doc, API keys,
    tenants, batches and the fair queue's index of waiting jobs included),
    then no client may get, list, create, update or delete it."""
    tag = world.job_id.removeprefix("job-")
    doc = path.format(owner=world.owner, tag=tag)
    collection = doc.split("/")[0]
    server = {"admin"}
    assert allowed(world.get(actor, doc)) == expect(actor, server)
    assert allowed(world.query(actor, "", collection)) == expect(actor, server)
    assert allowed(world.set(actor, f"{collection}/n-{uuid.uuid4().hex[:6]}", {"x": 1},
                             exists=False)) == expect(actor, server)
    assert allowed(world.set(actor, doc, {"x": 2}, exists=True)) == expect(actor, server)
    assert allowed(world.delete(actor, doc)) == expect(actor, server)
