"""The OpenTelemetry SDK behind :mod:`kiln.tracing`, imported only when tracing is on.

One ``TracerProvider`` of Kiln's own (the global one is left alone, so tests can build
several), a parent-based sampler that decides new and remote traces by trace id, the W3C
trace-context propagator, and the exporter ``KILN_TRACING`` names: Cloud Trace through a
batch processor, or one JSON line per span (stdout, or appended to a file that several
local processes share).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kiln import log


def _line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


class JsonLinesExporter(SpanExporter):
    """Appends one JSON line per span to a file; each batch is one ``write`` on an
    ``O_APPEND`` descriptor, so the local stack's processes can share the file."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        os.write(self._fd, "".join(_line(s) for s in spans).encode())
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: The longest ``tracestate`` passed on (W3C Trace Context advises keeping 512 bytes).
TRACESTATE_MAX = 512


class Tracer:
    """Kiln's tracer: its spans, the propagator, and where spans go."""

    def __init__(self, mode: str, ratio: float, *, project: str, exporter: Any = None) -> None:
        # A span continues its parent's decision: in process, and from Kiln's own messages
        # (a push's attributes, which only Kiln writes), so a trace is whole or absent. A
        # request from outside is decided here, by a draw of our own (``server_span``): its
        # caller picks its trace id, which a ratio sampler by id would obey (ids ending in
        # zeros are always kept), and its sampled flag is the caller's too.
        self.ratio = ratio
        sampler = ParentBased(TraceIdRatioBased(ratio), remote_parent_sampled=ALWAYS_ON,
                              remote_parent_not_sampled=ALWAYS_OFF)
        # OTEL_SERVICE_NAME (set per function) names the service; the SDK reads it.
        self.provider = TracerProvider(sampler=sampler, resource=Resource.create({}))
        if exporter is not None:
            processor: Any = SimpleSpanProcessor(exporter)
        elif mode == "cloud":
            from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

            processor = BatchSpanProcessor(CloudTraceSpanExporter(project_id=project))
        elif mode == "console":
            processor = SimpleSpanProcessor(ConsoleSpanExporter(formatter=_line))
        else:  # file:PATH
            processor = SimpleSpanProcessor(JsonLinesExporter(mode.removeprefix("file:")))
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("kiln")
        self.propagator = TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        self.provider.shutdown()

    def span(self, name: str, attributes: Mapping[str, Any], *,
             kind: trace.SpanKind = trace.SpanKind.INTERNAL,
             context: Any = None) -> Any:
        return self.tracer.start_as_current_span(name, context=context, kind=kind,
                                                 attributes=_attributes(attributes))

    @contextmanager
    def server_span(self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any],
                    *, consumer: bool = False) -> Iterator[trace.Span]:
        """A span continuing the W3C context in ``carrier``: a push's attributes
        (``consumer``: Kiln's own, its decision followed) or a request's headers (its
        trace continued, sampled by a draw of our own at the ratio)."""
        kind = trace.SpanKind.CONSUMER if consumer else trace.SpanKind.SERVER
        context = self.propagator.extract(carrier)
        caller = trace.get_current_span(context).get_span_context()
        if not consumer and caller.is_valid:
            flags = trace.TraceFlags(trace.TraceFlags.SAMPLED if random.random() < self.ratio
                                     else trace.TraceFlags.DEFAULT)
            context = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
                caller.trace_id, caller.span_id, is_remote=True, trace_flags=flags,
                trace_state=caller.trace_state)))
        with self.span(name, attributes, kind=kind, context=context) as current:
            yield current

    def inject(self, carrier: MutableMapping[str, str]) -> None:
        self.propagator.inject(carrier)
        # A caller's tracestate rides along unread; past W3C's advised 512 bytes it is
        # dropped (Pub/Sub refuses an attribute over 1,024 bytes: the publish would fail).
        if len(carrier.get("tracestate", "")) > TRACESTATE_MAX:
            del carrier["tracestate"]

    def accepted(self, job_id: str) -> None:
        current = trace.get_current_span()
        current.update_name("kiln.accept")
        current.set_attribute("kiln.job_id", job_id)
        current.add_event("accepted", {"kiln.job_id": job_id})

    def set(self, span: trace.Span, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            if value is not None:
                span.set_attribute(key, value)


def _attributes(given: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes: Kiln's own under ``kiln.``, the job of the log context included."""
    out = {(k if "." in k else f"kiln.{k}"): v for k, v in given.items() if v is not None}
    job_id = log.current_job()
    if job_id and "kiln.job_id" not in out:
        out["kiln.job_id"] = job_id
    return out
