"""The client contract as data: JSON Schema, TypeScript types and OpenAPI, from ``kiln.core.job``.

Statuses, kinds, channels, option names and types and the prompt limit come from the
Python model, so the generated files cannot drift from what the server enforces::

    python -m kiln_dev.schema --write   # docs/generated/{job.schema.json,kiln.d.ts},
                                    # clients/web/src/kiln.d.ts, docs/openapi.yaml
    python -m kiln_dev.schema --check   # exit 1 if any of them is stale (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kiln.core.job import (
    ASPECT_RATIOS,
    CHANNELS,
    KINDS,
    PLATFORMS,
    PROMPT_MAX,
    TRANSITIONS,
    JobStatus,
)
from kiln.core.lifecycle import RETENTION_DAYS
from kiln.core.requests import _OPTION_RULES

REPO = Path(__file__).resolve().parents[2]
SCHEMA_ID = "https://kiln.dev/schemas/job.schema.json"
JSON_TYPES: dict[type, str] = {str: "string", int: "integer", bool: "boolean", float: "number"}
PUSH_TYPES = ("generation_completed", "generation_failed")
CONTENT_TYPES = {"image": "image/png", "model": "model/gltf-binary"}

#: What each option means and the limits ``kiln.core.job.validate_options`` enforces.
OPTION_DOCS: dict[str, dict[str, Any]] = {
    "aspectRatio": {"description": "Image shape.", "enum": list(ASPECT_RATIOS)},
    "seed": {"description": "Same prompt + seed gives the same result (where the provider can).",
             "minimum": 0, "maximum": 2**31 - 1},
    "style": {"description": "A style hint passed to the provider.", "minLength": 1, "maxLength": 64},
    "imageUrl": {"description": "Image-to-3D: a public URL of the source image.", "minLength": 1,
                 "maxLength": 2048},
    "texture": {"description": "Generate textures (slower).", },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], required: list[str] | None = None, description: str = "",
            additional: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if description:
        out["description"] = description
    out["properties"] = properties
    out["required"] = list(properties) if required is None else required
    out["additionalProperties"] = additional
    return out


def options_schema(kind: str) -> dict[str, Any]:
    """The ``options`` of a ``kind`` (names and types from ``kiln.core.job._OPTION_RULES``)."""
    properties = {}
    for name, expected in _OPTION_RULES[kind].items():
        assert isinstance(expected, type), f"option {name}: one JSON type expected"
        properties[name] = {"type": JSON_TYPES[expected], **OPTION_DOCS[name]}
    return _object(properties, [], f"Options when kind is `{kind}`; all optional.")


def _status_description() -> str:
    moves = "; ".join(f"{name}: {'|'.join(sorted(s.value for s in sources))} → {to.value}"
                      for name, (sources, to) in TRANSITIONS.items())
    return ("Job status. Terminal: completed, failed, canceled (failed → pending only by an "
            f"explicit retry). Transitions: {moves}.")


def _kind_options() -> list[dict[str, Any]]:
    """``options`` must match ``kind`` (if/then per kind)."""
    return [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
             "then": {"properties": {"options": _ref(f"{kind.capitalize()}Options")}}}
            for kind in KINDS]


def _job_fields(timestamp: dict[str, Any]) -> dict[str, Any]:
    """The client-facing fields of ``jobs/{jobId}`` (the contract, in document order)."""
    return {
        "uid": {"type": "string", "minLength": 1,
                "description": "Owner: the Firebase Auth uid (`telegram:<chatId>` for bot users)."},
        "channel": _ref("Channel"),
        "kind": _ref("Kind"),
        "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX,
                   "description": "What to generate; whitespace collapsed."},
        "options": {"type": "object", "description": "Per kind: ImageOptions or ModelOptions."},
        "status": _ref("JobStatus"),
        "stage": {"type": "string", "description": "Short human step: queued, starting, generating, "
                  "meshing, texturing, uploading, packaging, retrying, done, failed, canceled. "
                  "Show it; do not branch on it."},
        "progress": {"type": "integer", "minimum": 0, "maximum": 100,
                     "description": "0–100; never goes backwards within an attempt (a retry restarts at 0)."},
        "attempts": {"type": "integer", "minimum": 0, "description": "Worker attempts so far."},
        "error": _nullable(_ref("JobError")),
        "result": _nullable(_ref("JobResult")),
        "createdAt": {**timestamp, "description": "When the job was accepted (server time)."},
        "updatedAt": {**timestamp, "description": "Last write (server time)."},
        "startedAt": _nullable({**timestamp, "description": "First claim by a worker."}),
        "completedAt": _nullable({**timestamp, "description": "When it ended (completed, failed "
                                  "or canceled); null again after a retry."}),
    }


def _document_only(timestamp: dict[str, Any]) -> dict[str, Any]:
    """Fields of the document that the HTTP API's view leaves out."""
    return {
        "expireAt": {**timestamp, "description": "When Firestore's TTL policy deletes the job "
                     f"(about {RETENTION_DAYS} days after creation, like its files)."},
        "provenance": {"type": "object", "additionalProperties": True,
                       "description": "What the provider reported (provider, model, taskId, "
                       "credits…), set on completion. Informational; keys vary by provider.",
                       "properties": {"provider": {"type": "string"}}},
        "_server": {"type": "object", "additionalProperties": True,
                    "description": "Server-only state (lease, provider task, notification). "
                    "Clients must not rely on it."},
    }


def json_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the job document, with every contract type in ``$defs``."""
    timestamp = _ref("Timestamp")
    iso = {"type": "string", "format": "date-time"}
    job_fields = _job_fields(timestamp)
    extra = _document_only(timestamp)
    job = _object({**job_fields, **extra}, [*job_fields, "expireAt"],
                  "The job document `jobs/{jobId}` as clients read it.")
    job["allOf"] = _kind_options()
    view_fields = {"jobId": {"type": "string"}, **_job_fields(iso)}
    view_fields["createdAt"] = _nullable(iso)
    view_fields["updatedAt"] = _nullable(iso)
    view_fields["startedAt"] = _nullable(iso)
    view_fields["completedAt"] = _nullable(iso)
    view = _object(view_fields, None, "A job as the HTTP API returns it: the document's client "
                   "fields, timestamps as ISO 8601 strings.")
    view["allOf"] = _kind_options()
    create = _object({
        "kind": _ref("Kind"),
        "prompt": {"type": "string", "minLength": 1, "maxLength": PROMPT_MAX},
        "options": {"type": "object"},
    }, ["kind", "prompt"], "Body of POST /v1/jobs.")
    create["allOf"] = _kind_options()
    defs: dict[str, Any] = {
        "Job": job,
        "JobStatus": {"type": "string", "enum": [s.value for s in JobStatus],
                      "description": _status_description()},
        "Kind": {"type": "string", "enum": list(KINDS),
                 "description": "image = a PNG; model = a GLB (binary glTF 2.0) 3D model."},
        "Channel": {"type": "string", "enum": list(CHANNELS),
                    "description": "Where the request came from."},
        "ImageOptions": options_schema("image"),
        "ModelOptions": options_schema("model"),
        "JobError": _object({
            "code": {"type": "string", "description": "Stable machine code, e.g. content_refused, "
                     "timed_out, attempts_exhausted."},
            "message": {"type": "string", "description": "Safe to show to the user as is."},
            "retryable": {"type": "boolean", "description": "true while Kiln still retries by itself "
                          "(status pending, stage retrying); false once failed."},
        }, description="Why the job failed (or why the last attempt failed)."),
        "JobResult": _object({
            "path": {"type": "string", "description": "Object path in the bucket: "
                     "generations/{uid}/{jobId}/result.png or result.glb."},
            "contentType": {"type": "string", "enum": list(CONTENT_TYPES.values())},
            "bytes": {"type": "integer", "minimum": 1},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "downloadUrl": {"type": "string", "description": "Firebase download URL (token-bearing, "
                            "no expiry); or getDownloadURL(ref(storage, path))."},
            "thumbnailPath": {"type": "string", "description": "generations/{uid}/{jobId}/thumb.png "
                              "(PNG, up to 256 px)."},
            "thumbnailUrl": {"type": "string", "description": "Download URL of the thumbnail."},
        }, ["path", "contentType", "bytes", "sha256", "downloadUrl"],
            "The stored result; present when status is completed."),
        "Timestamp": {"type": "string", "format": "date-time", "x-typescript": "FirestoreTimestamp",
                      "description": "A Firestore Timestamp (server time). JSON renders it as ISO 8601."},
        "JobView": view,
        "Device": {**_object({
            "fid": {"type": "string", "minLength": 1, "maxLength": 4096,
                    "description": "The Firebase Installation ID FCM registered (onRegistered); "
                    "give this or token, not both."},
            "token": {"type": "string", "minLength": 1, "maxLength": 4096,
                      "description": "Legacy FCM registration token (getToken), for apps not yet "
                      "on FIDs; give this or fid, not both."},
            "platform": {"type": "string", "enum": list(PLATFORMS)},
            "updatedAt": {**timestamp, "description": "serverTimestamp() (the rules require it)."},
        }, ["platform", "updatedAt"], "users/{uid}/devices/{deviceId}: one of the user's devices, "
            "written by the app: exactly one of fid and token."),
            "oneOf": [{"required": ["fid"]}, {"required": ["token"]}]},
        "PushData": _object({
            "type": {"type": "string", "enum": list(PUSH_TYPES)},
            "jobId": {"type": "string"},
            "kind": _ref("Kind"),
            "link": {"type": "string", "description": "KILN_LINK_TEMPLATE with the job id "
                     "(default /jobs/{jobId}): where a tap should go."},
        }, description="The data of a completion push (all values are strings)."),
        "CreateJobRequest": create,
        "CreateJobResponse": _object({"jobId": {"type": "string"}, "status": _ref("JobStatus")},
                                     description="202: accepted (or replayed, see Idempotent-Replayed)."),
        "JobActionResponse": _object({"jobId": {"type": "string"}, "status": _ref("JobStatus")},
                                     description="Answer of :cancel (200) and :retry (202)."),
        "JobList": _object({"jobs": {"type": "array", "items": _ref("JobView")}},
                           description="GET /v1/jobs: newest first."),
        "ApiError": _object({"error": _object({
            "code": {"type": "string", "description": "Machine code, e.g. invalid_prompt, not_found."},
            "message": {"type": "string", "description": "Readable; names the bad field."},
        })}, description="Every error answer of the HTTP API."),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Kiln job",
        "description": "Generated by `python -m kiln_dev.schema --write` from kiln.core.job; do not edit.",
        "$ref": "#/$defs/Job",
        "$defs": defs,
    }


# --- TypeScript ---------------------------------------------------------------------------

_TS_PREAMBLE = """\
// Kiln client contract types. Generated by `python -m kiln_dev.schema --write` from kiln.core.job
// (JSON Schema: docs/generated/job.schema.json). Do not edit.

/** Structurally a firebase/firestore Timestamp (what the Firestore SDKs return). */
export interface FirestoreTimestamp {
  seconds: number;
  nanoseconds: number;
  toDate(): Date;
  toMillis(): number;
}
"""


def _ts_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    if "x-typescript" in schema:
        return str(schema["x-typescript"])
    if "anyOf" in schema:
        return " | ".join(_ts_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if kind == "array":
        return f"{_ts_type(schema['items'])}[]"
    if kind == "object":
        if "properties" in schema and schema.get("additionalProperties") is False:
            return "{ " + " ".join(f"{line.strip()}" for line in _ts_members(schema, "")) + " }"
        return "Record<string, unknown>"
    return {"string": "string", "integer": "number", "number": "number", "boolean": "boolean",
            "null": "null"}[str(kind)]


def _ts_members(schema: dict[str, Any], indent: str = "  ",
                overrides: dict[str, str] | None = None) -> list[str]:
    lines = []
    required = set(schema.get("required", []))
    for name, prop in schema["properties"].items():
        doc = prop.get("description")
        if doc:
            lines.append(f"{indent}/** {doc} */")
        optional = "" if name in required else "?"
        ts = (overrides or {}).get(name) or _ts_type(prop)
        lines.append(f"{indent}{name}{optional}: {ts};")
    return lines


def typescript(schema: dict[str, Any] | None = None) -> str:
    """TypeScript declarations for every ``$defs`` entry."""
    schema = schema or json_schema()
    out = [_TS_PREAMBLE]
    for name, definition in schema["$defs"].items():
        doc = definition.get("description")
        header = f"/** {doc} */\n" if doc else ""
        if definition.get("type") == "object" and "properties" in definition:
            overrides = {}
            if "allOf" in definition:  # options follow kind
                overrides["options"] = "ImageOptions | ModelOptions"
            members = "\n".join(_ts_members(definition, overrides=overrides))
            extra = "  [key: string]: unknown;\n" if definition.get("additionalProperties") else ""
            out.append(f"{header}export interface {name} {{\n{members}\n{extra}}}\n")
        else:
            out.append(f"{header}export type {name} = {_ts_type(definition)};\n")
    out.append("/** A job document with its id, as a snapshot listener hands it over. */\n"
               "export type JobWithId = Job & { id: string };\n")
    return "\n".join(out)


# --- OpenAPI ------------------------------------------------------------------------------

def _json_body(ref: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request (the message names the field).", 401: "Missing or invalid ID token.",
            404: "No such job, or not the caller's (the same answer for both).",
            405: "Wrong method.", 409: "The job's status does not allow this.",
            413: "Body too large.", 422: "Idempotency-Key reused for a different request.",
            503: "A dependency is busy; retry with backoff."}
    return {str(c): _json_body("ApiError", text[c]) for c in codes}


def openapi() -> dict[str, Any]:
    """OpenAPI 3.1 of the HTTP API; component schemas are the JSON Schema ``$defs``."""
    components = json.loads(json.dumps(json_schema()["$defs"]).replace("#/$defs/", "#/components/schemas/"))
    job_id = {"name": "jobId", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}}
    secured: list[dict[str, list[str]]] = [{"firebaseIdToken": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kiln HTTP API", "version": "1",
                 "description": "Generated by `python -m kiln_dev.schema --write`; the guide is "
                 "docs/client-contract.md. Jobs are created here and read live from Firestore "
                 "(`jobs/{jobId}`); GET endpoints are for callers that cannot listen."},
        "servers": [{"url": "https://REGION-PROJECT.cloudfunctions.net/ingress",
                     "description": "the ingress function"}],
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "security": secured,
        "paths": {
            "/v1/jobs": {
                "post": {
                    "operationId": "createJob", "summary": "Accept a job (answers in milliseconds)",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "description": "1–255 printable ASCII characters. The same key "
                                    "(per user) always maps to the same job: a retried request "
                                    "returns it with header Idempotent-Replayed: true.",
                                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"}}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/CreateJobRequest"},
                        "example": {"kind": "image", "prompt": "a ceramic fox",
                                    "options": {"aspectRatio": "1:1"}}}}},
                    "responses": {"202": _json_body("CreateJobResponse", "Accepted: watch jobs/{jobId}."),
                                  **_errors(400, 401, 413, 422, 503)},
                },
                "get": {
                    "operationId": "listJobs", "summary": "The caller's recent jobs, newest first",
                    "parameters": [{"name": "limit", "in": "query", "required": False,
                                    "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                               "default": 20}}],
                    "responses": {"200": _json_body("JobList", "Up to `limit` jobs."),
                                  **_errors(400, 401, 503)},
                },
            },
            "/v1/jobs/{jobId}": {"get": {
                "operationId": "getJob", "summary": "One job (owner only)", "parameters": [job_id],
                "responses": {"200": _json_body("JobView", "The job."), **_errors(401, 404, 503)},
            }},
            "/v1/jobs/{jobId}:cancel": {"post": {
                "operationId": "cancelJob", "summary": "Cancel a pending or processing job (idempotent)",
                "parameters": [job_id],
                "responses": {"200": _json_body("JobActionResponse", "Canceled (or already was)."),
                              **_errors(401, 404, 409, 503)},
            }},
            "/v1/jobs/{jobId}:retry": {"post": {
                "operationId": "retryJob", "summary": "Run a failed job again (idempotent)",
                "parameters": [job_id],
                "responses": {"202": _json_body("JobActionResponse", "Pending again."),
                              **_errors(401, 404, 409, 503)},
            }},
            "/healthz": {"get": {
                "operationId": "health", "summary": "Liveness", "security": [],
                "responses": {"200": {"description": "OK", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}}}},
            }},
            "/telegram/webhook": {"post": {
                "operationId": "telegramWebhook", "summary": "Telegram Bot API updates",
                "description": "For Telegram only. Authenticated by the "
                "X-Telegram-Bot-Api-Secret-Token header (setWebhook's secret_token).",
                "security": [{"telegramSecret": []}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object", "description": "A Telegram Update."}}}},
                "responses": {"200": {"description": "Handled (the body may carry one Bot API "
                                      "method call)."}, **_errors(401, 413)},
            }},
        },
        "components": {
            "securitySchemes": {
                "firebaseIdToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                    "description": "A Firebase Auth ID token "
                                    "(user.getIdToken()). Browsers: the API answers CORS "
                                    "preflights for the origins in KILN_CORS_ORIGINS."},
                "telegramSecret": {"type": "apiKey", "in": "header",
                                   "name": "X-Telegram-Bot-Api-Secret-Token"},
            },
            "schemas": components,
        },
    }


# --- files --------------------------------------------------------------------------------

def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    import yaml

    schema = json_schema()
    ts = typescript(schema)
    spec = yaml.safe_dump(openapi(), sort_keys=False, allow_unicode=True, width=100)
    return {
        REPO / "docs" / "generated" / "job.schema.json": json.dumps(schema, indent=2,
                                                                     ensure_ascii=False) + "\n",
        REPO / "docs" / "generated" / "kiln.d.ts": ts,
        REPO / "clients" / "web" / "src" / "kiln.d.ts": ts,
        REPO / "docs" / "openapi.yaml": "# Generated by `python -m kiln_dev.schema --write`; do not edit.\n"
        + spec,
    }


def stale() -> list[Path]:
    return [path for path, text in outputs().items()
            if not path.is_file() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="write the generated files")
    group.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"stale: {path.relative_to(REPO)} (run python -m kiln_dev.schema --write)", file=sys.stderr)
        return 1 if old else 0
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
