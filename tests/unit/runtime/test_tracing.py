"""OpenTelemetry spans of one job, on fakes with the SDK's in-memory exporter: the trace
context rides in Pub/Sub attributes and Cloud Tasks headers, so the ingress's and the
worker's spans are one trace; with tracing off nothing is added."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flask
import grpc
import pytest
from google.pubsub_v1 import PublisherClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.types import pubsub
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rig import Rig

from kiln import tracing
from kiln.adapters.cloudtasks import CloudTasksScheduler
from kiln.adapters.pubsub import PubSubQueue, encode_message
from kiln.core.errors import ConfigError
from kiln.http.api import handle
from kiln.runtime.worker import RunOutcome, handle_message
from kiln.settings import Settings

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


class PublishServer:
    """A gRPC server on 127.0.0.1 answering Pub/Sub's ``Publish`` as the service does;
    keeps the messages it was sent."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        request, response = pubsub.PublishRequest.pb(), pubsub.PublishResponse.pb()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher", {"Publish": grpc.unary_unary_rpc_method_handler(
                self._publish, request_deserializer=request.FromString,
                response_serializer=response.SerializeToString)})])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.client = PublisherClient(transport=PublisherGrpcTransport(
            channel=grpc.insecure_channel(f"127.0.0.1:{port}")))

    def _publish(self, request: Any, context: Any) -> Any:
        self.messages.extend(request.messages)
        return pubsub.PublishResponse.pb()(message_ids=[str(len(self.messages))])


@pytest.fixture
def publisher() -> Iterator[PublishServer]:
    server = PublishServer()
    yield server
    server.server.stop(None)


class StubTasks:
    def __init__(self) -> None:
        self.tasks: list[Any] = []

    def create_task(self, *, parent: str, task: Any, timeout: float) -> Any:
        self.tasks.append(task)
        return task


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(Settings(trace_sample=1.0), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.configure(Settings())


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def push(data: bytes, attributes: dict[str, str]) -> dict[str, Any]:
    """The push envelope Pub/Sub delivers for a message."""
    return {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes,
                        "messageId": "1", "publishTime": ""}}


def test_a_job_accepted_over_http_and_delivered_by_push_is_one_trace(
        rig: Rig, spans: InMemorySpanExporter, publisher: PublishServer) -> None:
    """Given a request carrying a caller's traceparent, when the ingress accepts the job,
    publishes it, and the worker runs the push, then the push's attributes carry the
    context, and accept, publish, deliver, claim, provider, store and notify are one trace
    in which the delivery is the child of the publish."""
    rig.services.queue = PubSubQueue("demo-unit", "kiln-jobs", publisher.client)
    request = flask.Request.from_values(
        "/v1/jobs", method="POST", json={"kind": "image", "prompt": "a red cube"},
        headers={"Authorization": "Bearer uid:alice", "traceparent": CALLER})
    response = handle(request, rig.services)
    assert response.status_code == 202
    job_id = response.get_json()["jobId"]
    (message,) = publisher.messages
    assert message.attributes["traceparent"].split("-")[1] == CALLER_TRACE

    outcome = handle_message(push(message.data, dict(message.attributes)), rig.services)

    assert outcome is RunOutcome.COMPLETED
    found = by_name(spans)
    assert {"kiln.accept", "pubsub.publish", "kiln.deliver", "kiln.claim", "kiln.provider",
            "kiln.store", "kiln.notify"} <= set(found)
    assert {format(s.context.trace_id, "032x") for s in found.values()} == {CALLER_TRACE}
    assert found["kiln.accept"].attributes["kiln.job_id"] == job_id
    assert found["kiln.accept"].attributes["http.response.status_code"] == 202
    assert found["kiln.deliver"].parent.span_id == found["pubsub.publish"].context.span_id
    assert found["kiln.claim"].parent.span_id == found["kiln.deliver"].context.span_id
    assert found["kiln.store"].attributes["kiln.job_id"] == job_id


def test_a_scheduled_check_carries_the_trace_in_its_headers_and_its_message(
        rig: Rig, spans: InMemorySpanExporter) -> None:
    """Given a delivery that schedules a check on Cloud Tasks, when the task is built, then
    its HTTP headers and its Pub/Sub message carry the delivery's trace, and the check's
    own delivery (from that message) is a child of the scheduling."""
    client = StubTasks()
    scheduler = CloudTasksScheduler(client, queue_path="projects/p/locations/l/queues/q",  # type: ignore[arg-type]
                                    publish_url="https://pubsub/x:publish")
    job_id = rig.submit()
    with tracing.span("kiln.deliver", job_id=job_id):
        assert scheduler.schedule(job_id, 1, dt.datetime.now(dt.UTC))
    (task,) = client.tasks
    (message,) = json.loads(task.http_request.body)["messages"]
    header = task.http_request.headers["traceparent"]
    assert message["attributes"]["traceparent"] == header
    scheduled = by_name(spans)["cloudtasks.schedule"]
    assert header.split("-")[1:3] == [format(scheduled.context.trace_id, "032x"),
                                      format(scheduled.context.span_id, "016x")]

    handle_message({"message": message}, rig.services)

    found = by_name(spans)  # the last of each name finished: the check's
    check = found["kiln.deliver"]
    assert check.attributes["kiln.check"] == "1"
    assert check.parent.span_id == scheduled.context.span_id
    assert check.context.trace_id == scheduled.context.trace_id
    assert found["kiln.claim"].parent.span_id == check.context.span_id


def test_with_tracing_off_nothing_is_added(rig: Rig) -> None:
    """Given tracing off (the default), when a message and a task are built inside a span
    hook, then neither carries a traceparent and the hooks are plain calls."""
    tracing.configure(Settings())
    assert not tracing.enabled()
    client = StubTasks()
    scheduler = CloudTasksScheduler(client, queue_path="projects/p/locations/l/queues/q",  # type: ignore[arg-type]
                                    publish_url="https://pubsub/x:publish")
    with tracing.span("kiln.deliver", job_id="j"):
        _data, attributes = encode_message("job-12345678")
        scheduler.schedule("job-12345678", 2, dt.datetime.now(dt.UTC))
    assert attributes == {"jobId": "job-12345678", "reason": "new"}
    assert dict(client.tasks[0].http_request.headers) == {"Content-Type": "application/json"}
    assert tracing.traced("x")(lambda: 7)() == 7


def test_file_mode_appends_one_json_line_per_span(tmp_path: Any) -> None:
    """Given ``KILN_TRACING=file:PATH``, when spans end, then each is one JSON line there."""
    path = tmp_path / "spans.jsonl"
    tracing.configure(Settings(env="local", tracing=f"file:{path}"))
    try:
        with tracing.span("kiln.deliver", job_id="job-1"), tracing.span("kiln.claim"):
            pass
    finally:
        tracing.configure(Settings())
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["name"] for line in lines] == ["kiln.claim", "kiln.deliver"]
    assert lines[0]["context"]["trace_id"] == lines[1]["context"]["trace_id"]
    assert lines[1]["attributes"]["kiln.job_id"] == "job-1"


def test_tracing_settings_are_checked_and_the_sample_defaults_per_env() -> None:
    with pytest.raises(ConfigError, match="KILN_TRACING"):
        Settings(tracing="jaeger")
    with pytest.raises(ConfigError, match="KILN_TRACE_SAMPLE"):
        Settings(trace_sample=1.5)
    with pytest.raises(ConfigError, match="KILN_TRACING"):
        Settings.from_env({"KILN_TRACING": "file:"})
    assert tracing.sample_ratio(Settings.from_env({"KILN_TRACING": "cloud"})) == 0.1
    assert tracing.sample_ratio(Settings(env="local")) == 1.0
    assert tracing.sample_ratio(Settings.from_env({"KILN_TRACE_SAMPLE": "0.5"})) == 0.5


def test_a_trace_not_sampled_records_nothing_and_its_hops_follow() -> None:
    """Given a sample ratio of 0, when a job is published, then its message still carries a
    context flagged not sampled, the delivery that continues it records no span, and a
    caller's sampled traceparent does not force a trace either."""
    exporter = InMemorySpanExporter()
    tracing.configure(Settings(trace_sample=0.0), exporter=exporter)
    try:
        with tracing.span("kiln.accept"):
            _data, attributes = encode_message("job-12345678")
        traced = tracing.delivered(lambda data: "ran")
        assert traced(push(b"{}", attributes)) == "ran"
        request = flask.Request.from_values("/healthz", headers={"traceparent": CALLER})
        assert tracing.served(lambda r: r.path)(request) == "/healthz"
    finally:
        tracing.configure(Settings())
    assert int(attributes["traceparent"].split("-")[3], 16) & 1 == 0  # the sampled flag
    assert exporter.get_finished_spans() == ()


def test_kiln_dev_trace_names_the_spans_file(tmp_path: Any) -> None:
    """``kiln dev --trace [PATH]``: the functions' KILN_TRACING (none without the flag)."""
    from kiln_dev.cli import trace_env

    path = tmp_path / "new" / "spans.jsonl"
    assert trace_env(None) == {}
    assert trace_env("-") == {"KILN_TRACING": "console"}
    assert trace_env(str(path)) == {"KILN_TRACING": f"file:{path}"}
    assert path.parent.is_dir()
    Settings.from_env(trace_env(str(path)))  # a value the settings accept


def test_a_callers_long_tracestate_is_not_passed_on_to_the_message() -> None:
    """Given a request whose tracestate is 7,600 bytes (valid W3C), then the job's message
    carries the trace but not that tracestate: Pub/Sub refuses an attribute over 1,024
    bytes, and the publish would fail. A short one is passed on."""
    from opentelemetry import context, propagate

    exporter = InMemorySpanExporter()
    tracing.configure(Settings(trace_sample=1.0), exporter=exporter)
    try:
        for state, kept in ((",".join(f"v{n}=" + "x" * 200 for n in range(32)), False),
                            ("v0=short", True)):
            carrier = {"traceparent": CALLER, "tracestate": state}
            token = context.attach(propagate.extract(carrier))
            try:
                _data, attributes = encode_message("job-12345678")
            finally:
                context.detach(token)
            assert attributes["traceparent"].split("-")[1] == CALLER_TRACE
            assert ("tracestate" in attributes) is kept
            assert len(attributes.get("tracestate", "")) <= 512
    finally:
        tracing.configure(Settings())


def test_a_caller_cannot_pick_a_trace_id_that_is_always_kept() -> None:
    """A ratio sampler by trace id keeps every id whose low 64 bits are small: a caller
    that sends such ids (its sampled flag set) was traced on every request, whatever the
    ratio. Its request is now kept by a draw of our own, and its trace still continued."""
    exporter = InMemorySpanExporter()
    tracing.configure(Settings(trace_sample=1e-9), exporter=exporter)
    forced = "00-4bf92f3577b34da60000000000000000-00f067aa0ba902b7-01"
    try:
        served = tracing.served(lambda r: r.path)
        for _ in range(20):
            request = flask.Request.from_values("/healthz", headers={"traceparent": forced})
            assert served(request) == "/healthz"
        assert exporter.get_finished_spans() == ()
        kept = InMemorySpanExporter()  # (a tracer configured again shuts its exporter down)
        tracing.configure(Settings(trace_sample=1.0), exporter=kept)
        request = flask.Request.from_values("/healthz", headers={"traceparent": forced})
        assert tracing.served(lambda r: r.path)(request) == "/healthz"
        (span,) = kept.get_finished_spans()
        assert format(span.context.trace_id, "032x") == "4bf92f3577b34da60000000000000000"
    finally:
        tracing.configure(Settings())
