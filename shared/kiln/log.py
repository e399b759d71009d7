"""Structured logs: one JSON object per line, in the Cloud Logging format.

``job_context(job_id)`` puts the job id on every line logged inside it (thread- and
task-local through ``contextvars``). Secret values registered with ``redact_values``
are replaced wherever they appear in a message.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("kiln_job_id", default=None)
_secrets: list[str] = []

_LEVELS = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


def redact_values(values: list[str]) -> None:
    """Register secret values (tokens, keys) that must never reach a log line."""
    for value in values:
        if value and len(value) >= 6 and value not in _secrets:
            _secrets.append(value)


def redact(text: str) -> str:
    for value in _secrets:
        text = text.replace(value, "***")
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as a Cloud Logging structured entry."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _LEVELS.get(record.levelno, "DEFAULT"),
            "message": redact(record.getMessage()),
            "logger": record.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
        }
        job_id = getattr(record, "jobId", None) or _job_id.get()
        if job_id:
            entry["jobId"] = job_id
            entry["logging.googleapis.com/labels"] = {"jobId": job_id}
        fields = getattr(record, "fields", None)
        if fields:
            entry.update({k: _safe(v) for k, v in fields.items()})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def _safe(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def current_job() -> str | None:
    """The job id of the enclosing ``job_context`` (None outside one)."""
    return _job_id.get()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is written, not as it was when the
    handler was made: a process that swaps the stream (a test runner capturing output,
    then closing its capture while a stack's sweeper thread still logs) never leaves
    the handler on a closed file."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # (StreamHandler.__init__ and setStream set it: always the current stderr)


def setup(level: str = "INFO", stream: Any = None) -> None:
    """Route the ``kiln`` logger to stderr (``stream`` if given) as JSON lines
    (idempotent)."""
    logger = logging.getLogger("kiln")
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(f"kiln.{name}")


def event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``message`` with structured ``fields``."""
    logger.log(level, message, extra={"fields": fields})
