"""Kiln's structured log lines (``kiln.log``): one JSON object per line in the Cloud
Logging format, every secret redacted, whole when many threads write."""

from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln import log


@pytest.fixture
def kiln_logger() -> Iterator[logging.Logger]:
    """The ``kiln`` logger as a test found it, restored after."""
    logger = logging.getLogger("kiln")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers = []
    yield logger
    logger.handlers, logger.level, logger.propagate = list(saved[0]), saved[1], saved[2]


def _lines(text: str, logger: str) -> list[dict[str, Any]]:
    """The lines of ``logger`` (a stack's threads in this process may log meanwhile)."""
    return [entry for entry in map(json.loads, text.splitlines()) if entry["logger"] == logger]


@pytest.mark.parametrize("on_a_file", [False, True])
def test_an_event_is_one_cloud_logging_entry_with_its_job_and_fields_and_no_secret(
        kiln_logger: logging.Logger, tmp_path: Path, on_a_file: bool) -> None:
    """Given setup's handler on a stream (in memory, or a file's), an event inside a job's
    context is one JSON line: severity, message, logger, a UTC time in milliseconds, the
    job's id and label, the fields; a registered secret is redacted everywhere."""
    stream: Any = open(tmp_path / "log", "w+", buffering=1) if on_a_file else io.StringIO()  # noqa: SIM115
    log.setup("INFO", stream)
    log.redact_values(["s3cr3t-value"])
    with log.job_context("abcdefabcdefabcdef12"):
        log.event(log.get("probe"), "token s3cr3t-value seen", kind="image",
                  note="s3cr3t-value", n=3)
    stream.seek(0)
    [line] = _lines(stream.read(), "kiln.probe")
    kiln_logger.handlers = []  # (before the stream closes: other threads may log)
    stream.close()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
    assert line == {
        "severity": "INFO", "message": "token *** seen", "logger": "kiln.probe",
        "jobId": "abcdefabcdefabcdef12",
        "logging.googleapis.com/labels": {"jobId": "abcdefabcdefabcdef12"},
        "kind": "image", "note": "***", "n": 3}


def test_events_below_the_level_are_not_written(kiln_logger: logging.Logger) -> None:
    stream = io.StringIO()
    log.setup("WARNING", stream)
    log.event(log.get("probe"), "quiet")
    log.event(log.get("probe"), "loud", logging.ERROR)
    assert [line["message"] for line in _lines(stream.getvalue(), "kiln.probe")] == ["loud"]


def test_lines_written_to_a_file_from_many_threads_are_whole(
        kiln_logger: logging.Logger) -> None:
    """On a stream with a file (stderr in the functions), 8 threads × 200 events and
    records interleaved leave 3,200 whole JSON lines."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        with open(path, "w", buffering=1) as stream:
            log.setup("INFO", stream)
            logger = log.get("threads")

            def write(k: int) -> None:
                for i in range(200):
                    log.event(logger, "event", thread=k, i=i, pad="x" * 200)
                    logger.info("record", extra={"fields": {"thread": k, "i": i}})

            threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            kiln_logger.handlers = []
        lines = _lines(path.read_text(), "kiln.threads")
    assert len(lines) == 3200
    assert sorted((line["message"], line["thread"], line["i"]) for line in lines) == sorted(
        (message, k, i) for message in ("event", "record") for k in range(8) for i in range(200))


def test_without_a_stream_lines_go_to_stderr_as_it_is_now(
        kiln_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that swaps ``sys.stderr`` after the logger was set up (pytest's capture)
    gets its lines on the new stream, and a closed old one is never written to (the
    stack's sweeper thread logged into a closed capture: '--- Logging error ---')."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    log.setup("INFO")
    log.event(log.get("test"), "one")
    first.close()
    monkeypatch.setattr("sys.stderr", second)
    log.event(log.get("test"), "two")
    assert [entry["message"] for entry in _lines(second.getvalue(), "kiln.test")] == ["two"]
