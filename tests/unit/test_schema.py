"""The generated contract (kiln_dev.schema) agrees with the Python model and is up to date.

docs/generated/job.schema.json, docs/generated/kiln.d.ts (the only copy of the TypeScript;
the web app imports it) and docs/openapi.yaml are generated from the pydantic models in
kiln.core.contract and kiln.core.requests; the example documents in docs/client-contract.md
are validated against the schema.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
import yaml

from kiln.core import lifecycle
from kiln.core.errors import ValidationError
from kiln.core.job import (
    ASPECT_RATIOS,
    CHANNELS,
    KINDS,
    PLATFORMS,
    PROMPT_MAX,
    PUBLIC_FIELDS,
    Job,
    JobStatus,
)
from kiln.core.policy import RetryPolicy
from kiln.core.requests import OPTION_MODELS, JobRequest, parse_job_request
from kiln_dev import schema

CONTRACT = schema.REPO / "docs" / "client-contract.md"
NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return schema.json_schema()


def validate(instance: Any, node: dict[str, Any], root: dict[str, Any], where: str = "$") -> list[str]:
    """A small JSON Schema validator for the keywords kiln_dev.schema uses (errors as strings)."""
    errors: list[str] = []
    if "$ref" in node:
        errors += validate(instance, root["$defs"][node["$ref"].rsplit("/", 1)[1]], root, where)
    if "anyOf" in node and all(validate(instance, s, root, where) for s in node["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in node and sum(not validate(instance, s, root, where) for s in node["oneOf"]) != 1:
        errors.append(f"{where}: does not match exactly one of oneOf")
    for sub in node.get("allOf", []):
        errors += validate(instance, sub, root, where)
    if "if" in node and not validate(instance, node["if"], root, where):
        errors += validate(instance, node["then"], root, where)
    types = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list,
             "null": type(None), "number": (int, float)}
    kind = node.get("type")
    if kind == "integer" and isinstance(instance, float) and instance.is_integer():
        instance = int(instance)  # JSON Schema: 1.0 is an integer
    if kind and (not isinstance(instance, types[kind]) or (kind in ("integer", "number")
                                                            and isinstance(instance, bool))):
        return [*errors, f"{where}: {instance!r} is not {kind}"]
    if "enum" in node and instance not in node["enum"]:
        errors.append(f"{where}: {instance!r} not in {node['enum']}")
    if "const" in node and instance != node["const"]:
        errors.append(f"{where}: {instance!r} != {node['const']!r}")
    if isinstance(instance, str):
        if len(instance) < node.get("minLength", 0) or len(instance) > node.get("maxLength", 1e9):
            errors.append(f"{where}: length {len(instance)} out of range")
        if "pattern" in node and not re.search(node["pattern"], instance):
            errors.append(f"{where}: does not match {node['pattern']}")
    if isinstance(instance, int) and not node.get("minimum", -1e18) <= instance <= node.get("maximum", 1e18):
        errors.append(f"{where}: {instance} out of range")
    if isinstance(instance, dict) and "properties" in node:
        errors += [f"{where}: missing {name}" for name in node.get("required", []) if name not in instance]
        for name, value in instance.items():
            if name in node["properties"]:
                errors += validate(value, node["properties"][name], root, f"{where}.{name}")
            elif node.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected field {name}")
    if isinstance(instance, list) and "items" in node:
        for i, item in enumerate(instance):
            errors += validate(item, node["items"], root, f"{where}[{i}]")
    return errors


def doc_examples() -> list[tuple[str, Any]]:
    """(schema name, instance) for each ```json block after <!-- schema: Name --> in the contract."""
    text = CONTRACT.read_text()
    found = re.findall(r"<!-- schema: (\w+) -->\s*```json\n(.*?)```", text, re.S)
    return [(name, json.loads(body)) for name, body in found]


def test_generated_files_are_current() -> None:
    """Given the model as it is, when regenerating, then every generated file is unchanged
    (run `python -m kiln_dev.schema --write` after changing the models)."""
    assert schema.stale() == [], "run: python -m kiln_dev.schema --write"
    assert schema.main(["--check"]) == 0


def test_enums_and_limits_come_from_the_model(spec: dict[str, Any]) -> None:
    defs = spec["$defs"]
    assert defs["JobStatus"]["enum"] == [s.value for s in JobStatus]
    assert defs["Kind"]["enum"] == list(KINDS)
    assert defs["Channel"]["enum"] == list(CHANNELS)
    assert defs["Job"]["properties"]["prompt"]["maxLength"] == PROMPT_MAX
    assert defs["ImageJobRequest"]["properties"]["prompt"]["maxLength"] == PROMPT_MAX
    assert defs["ImageOptions"]["properties"]["aspectRatio"]["enum"] == list(ASPECT_RATIOS)
    assert defs["Device"]["properties"]["platform"]["enum"] == list(PLATFORMS)
    assert list(OPTION_MODELS) == list(KINDS)
    assert defs["CreateJobRequest"]["discriminator"]["mapping"] == {
        kind: f"#/$defs/{kind.capitalize()}JobRequest" for kind in KINDS}
    for kind, model in OPTION_MODELS.items():
        assert list(defs[f"{kind.capitalize()}Options"]["properties"]) == list(model.model_fields)


def test_job_fields_match_the_lifecycle(spec: dict[str, Any]) -> None:
    """Given a new job document and every transition's change, then each public field they
    write is in the schema, the schema requires exactly the new document's fields, and it
    has no room for server state (that lives in jobs/{id}/private/server)."""
    policy = RetryPolicy()
    new = lifecycle.new_job(job_id="job-1", uid="u", channel="app", request=JobRequest("image", "p"),
                            now=NOW, policy=policy)
    job = spec["$defs"]["Job"]
    assert "_server" not in job["properties"] and job["additionalProperties"] is False
    assert set(job["required"]) == set(new.doc)
    assert set(job["properties"]) == set(PUBLIC_FIELDS)
    assert not set(new.server) & set(job["properties"]) - {"expireAt"}
    running = Job.from_docs("job-1", {**new.doc, "status": "processing", "createdAt": NOW},
                            {"leaseOwner": "w"})
    failed = Job.from_docs("job-1", {**new.doc, "status": "failed"})
    changes = [lifecycle.complete(running, worker_id="w", result={}, provenance={"model": "m"}),
               lifecycle.fail(running, code="c", message="m"),
               lifecycle.report_progress(running, worker_id="w", now=NOW, policy=policy,
                                         progress=5, stage="generating"),
               lifecycle.cancel(running), lifecycle.retry(failed, now=NOW, policy=policy),
               lifecycle.claim(Job.from_docs("job-1", {**new.doc}), worker_id="w", now=NOW,
                               policy=policy, claim_token="t").change]
    for change in changes:
        assert change is not None
        assert set(change.job) <= set(job["properties"]), set(change.job) - set(job["properties"])


def test_http_view_matches_public_view(spec: dict[str, Any]) -> None:
    view = Job.from_docs("job-1", {"status": "pending", "createdAt": NOW}).public_view()
    assert list(spec["$defs"]["JobView"]["properties"]) == [*view, "batchId"]
    in_batch = Job.from_docs("job-1", {"status": "pending", "batchId": "b-1"}).public_view()
    assert list(spec["$defs"]["JobView"]["properties"]) == list(in_batch)


@pytest.mark.parametrize(("options", "ok"), [
    ({"seed": 0}, True), ({"seed": 2**31 - 1}, True), ({"seed": 2**31}, False), ({"seed": -1}, False),
    ({"style": "x" * 64}, True), ({"style": "x" * 65}, False), ({"style": ""}, False),
    ({"aspectRatio": "16:9"}, True), ({"aspectRatio": "2:1"}, False), ({"texture": True}, False),
    ({"seed": 30920248.0}, True), ({"seed": 1.5}, False), ({"seed": True}, False), ({"seed": "7"}, False),
])
def test_option_limits_agree_with_validation(spec: dict[str, Any], options: dict[str, Any], ok: bool) -> None:
    """Given image options at the schema's boundaries, then the server's validation and the
    schema give the same verdict."""
    body = {"kind": "image", "prompt": "a fox", "options": options}
    assert (validate(body, spec["$defs"]["CreateJobRequest"], spec) == []) is ok
    try:
        parse_job_request(body)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted is ok


def test_docs_examples_are_valid(spec: dict[str, Any]) -> None:
    """Given every example document in docs/client-contract.md, then each is valid; there is
    one job example per status."""
    examples = doc_examples()
    assert examples, "no <!-- schema: … --> examples found"
    for name, instance in examples:
        assert validate(instance, spec["$defs"][name], spec) == [], (name, instance)
    statuses = {inst["status"] for name, inst in examples if name == "Job"}
    assert statuses == {s.value for s in JobStatus}


def test_validator_catches_bad_documents(spec: dict[str, Any]) -> None:
    """The checker above can fail: a wrong status, an option of the other kind, an unknown field."""
    job = next(inst for name, inst in doc_examples() if name == "Job")
    assert validate({**job, "status": "done"}, spec["$defs"]["Job"], spec)
    assert validate({**job, "kind": "image", "options": {"texture": True}}, spec["$defs"]["Job"], spec)
    assert validate({**job, "extra": 1}, spec["$defs"]["Job"], spec)


def test_openapi_covers_every_endpoint(spec: dict[str, Any]) -> None:
    doc = yaml.safe_load((schema.REPO / "docs" / "openapi.yaml").read_text())
    assert doc["openapi"].startswith("3.1")
    assert {(path, method) for path, ops in doc["paths"].items() for method in ops} == {
        ("/v1/jobs", "post"), ("/v1/jobs", "get"), ("/v1/jobs/{jobId}", "get"),
        ("/v1/jobs/{jobId}/timeline", "get"),
        ("/v1/jobs/{jobId}:cancel", "post"), ("/v1/jobs/{jobId}:retry", "post"),
        ("/healthz", "get"), ("/telegram/webhook", "post"),
        ("/v1/providers/{provider}/events", "post"), ("/v1/batches", "post"),
        ("/v1/batches/{batchId}", "get"), ("/v1/batches/{batchId}:cancel", "post"),
        ("/v1/webhooks", "post"), ("/v1/webhooks", "get"), ("/v1/webhooks/secret", "get"),
        ("/v1/webhooks/{endpointId}", "delete")}
    assert set(doc["components"]["schemas"]) == set(spec["$defs"]) | set(schema.WEBHOOK_SCHEMAS)
    assert set(doc["webhooks"]) == {"job.completed", "job.failed", "job.canceled",
                                    "batch.completed", "job.progress"}
    text = json.dumps(doc)
    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', text):
        assert ref in doc["components"]["schemas"]
