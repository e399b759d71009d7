"""Opt-in OpenTelemetry tracing: a span per hop of a job, one trace from webhook to result.

``configure(settings)`` runs once per process (the composition root). With
``KILN_TRACING=off`` (the default) nothing here imports ``opentelemetry``: every hook is a
check of one module global and returns at once (the ingress's acknowledgement pays
nothing, tests/static/test_ingress_imports.py checks the imports). When tracing is on,
:mod:`kiln.tracing_otel` builds the SDK's tracer (exporter, sampler) and the hooks:

- :func:`served` wraps the HTTP edge: a span per request (``kiln.ingress``, renamed
  ``kiln.accept`` by :func:`accepted` when the request accepts a job), continuing a W3C
  ``traceparent`` the request carries (a caller's, the platform's, a Cloud Tasks task's);
- :func:`inject` writes the current context as ``traceparent``/``tracestate`` into a
  Pub/Sub message's attributes or an HTTP request's headers (nothing when off);
- :func:`delivered` wraps the worker's handler: ``kiln.deliver``, continuing the context
  in the push's ``message.attributes``;
- :func:`span` and :func:`traced` make the child spans (publish, claim, generate, store,
  notify, check scheduling). Every span carries ``kiln.job_id`` when a job is known.

Names, attributes and how to read a trace: docs/tracing.md.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from kiln.settings import Settings
    from kiln.tracing_otel import Tracer

P = ParamSpec("P")
R = TypeVar("R")

#: The modes of ``KILN_TRACING``; ``file:PATH`` appends one JSON line per span to PATH.
MODES = ("off", "cloud", "console", "file:PATH")
#: The sample ratio when ``KILN_TRACE_SAMPLE`` is not set (negative): cloud, local.
DEFAULT_SAMPLE = {"cloud": 0.1, "local": 1.0}

_NOOP: AbstractContextManager[Any] = contextlib.nullcontext()
_tracer: Tracer | None = None


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`MODES`."""
    if mode not in ("off", "cloud", "console") and not (mode.startswith("file:") and mode[5:]):
        raise ValueError(f"KILN_TRACING must be one of {', '.join(MODES)}, not {mode!r}")


def sample_ratio(settings: Settings) -> float:
    """The ratio of traces kept, decided by trace id (every function decides alike)."""
    if settings.trace_sample >= 0:
        return settings.trace_sample
    return DEFAULT_SAMPLE["local" if settings.local else "cloud"]


def configure(settings: Settings, *, exporter: Any = None) -> None:
    """Turn tracing on as ``settings.tracing`` says, or off (``exporter``: a test's own
    SDK span exporter, spans exported at once)."""
    global _tracer
    if _tracer is not None:
        _tracer.shutdown()
        _tracer = None
    if settings.tracing == "off" and exporter is None:
        return
    from kiln.tracing_otel import Tracer

    _tracer = Tracer(settings.tracing, sample_ratio(settings), project=settings.project,
                     exporter=exporter)


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A child span of the current one (a no-op context when tracing is off)."""
    if _tracer is None:
        return _NOOP
    return _tracer.span(name, attributes)


def traced(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so each call is a span named ``name`` (a plain call when off)."""
    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _tracer is None:
                return fn(*args, **kwargs)
            with _tracer.span(name, {}):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


def inject(carrier: MutableMapping[str, str]) -> None:
    """Add the current trace context (``traceparent``, ``tracestate``) to ``carrier``:
    Pub/Sub attributes or HTTP headers. Nothing when off or outside any span."""
    if _tracer is not None:
        _tracer.inject(carrier)


def accepted(job_id: str) -> None:
    """Mark the current request's span as the acceptance of ``job_id`` (``kiln.accept``)."""
    if _tracer is not None:
        _tracer.accepted(job_id)


def served(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate the HTTP edge ``handle(request, services)``: one server span per request,
    continuing the request's ``traceparent``."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if _tracer is None:
            return fn(*args, **kwargs)
        request = args[0]
        attributes = {"http.request.method": getattr(request, "method", ""),
                      "url.path": getattr(request, "path", "")}
        headers = getattr(request, "headers", {})
        with _tracer.server_span("kiln.ingress", headers, attributes) as current:
            result = fn(*args, **kwargs)
            _tracer.set(current, {"http.response.status_code":
                                  getattr(result, "status_code", None)})
            return result
    return wrapper


def delivered(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate the worker's ``handle_message(data, services)``: ``kiln.deliver``,
    continuing the context in the push's ``message.attributes``."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if _tracer is None:
            return fn(*args, **kwargs)
        attributes = message_attributes(args[0])
        names = {"jobId": "job_id", "reason": "reason", "check": "check"}
        fields = {names[k]: v for k, v in attributes.items() if k in names}
        with _tracer.server_span("kiln.deliver", attributes, fields, consumer=True):
            return fn(*args, **kwargs)
    return wrapper


def message_attributes(data: Any) -> Mapping[str, str]:
    """The attributes of a Pub/Sub push envelope (empty for a malformed one)."""
    message = data.get("message") if isinstance(data, Mapping) else None
    attributes = message.get("attributes") if isinstance(message, Mapping) else None
    if not isinstance(attributes, Mapping):
        return {}
    return {str(k): str(v) for k, v in attributes.items()}
