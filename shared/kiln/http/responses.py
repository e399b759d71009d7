"""JSON in and out at the HTTP edge: bodies read within a limit, answers and errors in
the contract's shape (``{error: {code, message}}``)."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
from typing import Any

import flask

from kiln.core.errors import RequestError


def read_json(request: flask.Request, max_bytes: int) -> Any:
    """The JSON body, refusing what is not strictly one JSON document before it costs
    anything: a media type other than ``application/json`` (415; a ``charset`` other than
    UTF-8 too, or a ``Content-Encoding`` such as gzip), an oversized body (413), a body
    shorter than its ``Content-Length``, bytes that are not UTF-8, duplicate keys in an
    object, or malformed JSON (``NaN`` and ``Infinity`` included), a number too large to
    read (an integer of more than Python's 4300 digits, a float beyond a double's range such
    as ``1e999``) or JSON nested too deeply to parse (400)."""
    media, _, params = (request.headers.get("Content-Type") or "").partition(";")
    charset = next((v.strip().strip('"').lower() for k, _, v in
                    (p.strip().partition("=") for p in params.split(";"))
                    if k.strip().lower() == "charset"), "utf-8")
    if media.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise RequestError(415, "unsupported_media_type",
                           "Send the body as JSON, with Content-Type: application/json "
                           "(UTF-8).")
    if (request.headers.get("Content-Encoding") or "identity").strip().lower() != "identity":
        raise RequestError(415, "unsupported_media_type",
                           "Send the body uncompressed: no Content-Encoding is taken.")
    raw = read_body(request, max_bytes)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                          parse_constant=_not_json, parse_int=_integer, parse_float=_finite)
    except _DuplicateKey as exc:
        raise RequestError(400, "duplicate_key",
                           f"The key {_shown(exc.key)} appears twice in one object.") from exc
    except _TooLarge as exc:
        raise RequestError(400, "invalid_json", f"A number in the body is too large: {exc}.") \
            from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(400, "invalid_json", "The body is not valid UTF-8 JSON.") from exc


def read_body(request: flask.Request, max_bytes: int) -> bytes:
    """The body's bytes, at most ``max_bytes``: a larger body, declared or counted, is 413;
    one shorter than its ``Content-Length``, or one the server cannot read (a malformed
    chunked encoding: a bad chunk size, a missing CRLF, a body cut short), is 400."""
    length = request.content_length
    refuse_oversized(request, length, max_bytes)
    try:
        raw = b"" if length == 0 else request.stream.read(max_bytes + 1)
    except RequestError:
        raise
    except Exception as exc:  # the server's own reader refused the framing (gunicorn's)
        raise RequestError(400, "bad_request", "The body could not be read: its chunked "
                           "encoding is malformed or it was cut short.") from exc
    refuse_oversized(request, len(raw), max_bytes)
    if length is not None and len(raw) < length:
        raise RequestError(400, "incomplete_body",
                           f"The body ended after {len(raw)} of its {length} bytes.")
    request.environ[_BODY_READ] = True  # to its end: nothing left for finish_body
    return raw


def refuse_oversized(request: flask.Request, size: int | None, max_bytes: int) -> None:
    """413 ``body_too_large`` for a body of ``size`` bytes (declared or counted; None:
    unknown) over ``max_bytes``. Such a body is not drained after the answer
    (:func:`finish_body`): its connection closes instead."""
    if size is not None and size > max_bytes:
        request.environ[_OVERSIZED] = True
        raise RequestError(413, "body_too_large", f"The body must be at most {max_bytes} bytes.")


#: The most of a body read after the answer to keep its connection: the largest body a
#: route takes (a batch's 1 MiB), and how long to wait for what the client still sends.
DRAIN_MAX_BYTES = 1024 * 1024 + 1
DRAIN_WAIT = 2.0
_BODY_READ = "kiln.body_read"  # (environ) read_body read the whole body
_OVERSIZED = "kiln.body_oversized"  # (environ) refused 413: left unread


def finish_body(request: flask.Request) -> None:
    """Read what is left of the body, keeping none of it, before the answer goes out; then
    functions-framework's own drain (``read_request``: ``request.get_data()``, which
    would buffer the whole body however large) reads nothing more.

    gunicorn keeps a connection for its next request only if at most 64 KiB of the body
    are left unread; so the rest of a body of up to :data:`DRAIN_MAX_BYTES` (a refused
    batch, say) is read, for at most :data:`DRAIN_WAIT` seconds in all. What is still
    unread after that, or after a malformed chunk, or a body refused for its size
    (:func:`refuse_oversized`) is left: its connection closes after the answer, and
    memory holds none of it."""
    length = request.content_length
    chunked = length is None and "chunked" in (request.headers.get("Transfer-Encoding") or "")
    unread = not (request.environ.get(_BODY_READ) or request.environ.get(_OVERSIZED)) and (
        chunked or (length is not None and 0 < length <= DRAIN_MAX_BYTES))
    if unread:  # (an accepted job's body was read to its end: nothing to do)
        # gunicorn's reads wait for all the bytes they ask for, one socket read after
        # another, so no timeout per read bounds a client that drips: at the drain's end
        # its socket is shut for reading, which ends the read under way (and the
        # connection, after the answer).
        sock = request.environ.get("gunicorn.socket")
        cut = threading.Timer(DRAIN_WAIT, _stop_reading, (sock,)) if sock is not None else None
        if cut is not None:
            cut.daemon = True
            cut.start()
        try:
            left = DRAIN_MAX_BYTES
            while left > 0 and (piece := request.stream.read(min(65536, left))):
                left -= len(piece)
        except Exception:  # cut short, malformed, or too slow: let it close
            pass
        finally:
            if cut is not None:
                cut.cancel()
    request._cached_data = b""  # werkzeug's get_data returns its cache when there is one


def _stop_reading(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")  # Python's json takes NaN, Infinity


class _TooLarge(ValueError):
    """A JSON number Kiln cannot hold as written."""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # Python reads at most 4300 digits (sys.get_int_max_str_digits)
        raise _TooLarge(f"an integer of {len(text.lstrip('-'))} digits") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 reads as infinity, which is not JSON
        raise _TooLarge(f"{text[:20]} is beyond a 64-bit float")
    return value


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _shown(key: str, limit: int = 40) -> str:
    text = json.dumps(key)
    return text if len(text) <= limit else text[:limit] + "…\""


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(json.dumps(payload), status=status, mimetype="application/json",
                          headers=headers or {})


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> flask.Response:
    return json_response(status, {"error": {"code": code, "message": message}}, headers)
