"""What the server around the HTTP edge answers on its own, in the contract's shape.

Most hostile requests reach :func:`kiln.http.api.handle`, which answers every one with a
documented status and ``{error: {code, message}}``. Two layers answer before it, with
their own HTML pages:

- Flask (inside functions-framework) for what never reaches the function: the
  framework's own routes (``/robots.txt``, ``/favicon.ico``), a path starting ``//``, a
  request Flask or werkzeug refuses, and — were there ever one — an exception escaping
  the function (500).
  :func:`install` registers error handlers through ``functions_framework.errorhandler``.
- gunicorn (the HTTP server functions-framework runs) for requests it cannot parse:
  oversized or malformed header lines, more than 100 headers, a header field over
  8190 bytes (an ``Idempotency-Key`` of 10 KB), ``Content-Length`` together with
  ``Transfer-Encoding: chunked``, an unknown transfer coding. gunicorn offers no hook
  for its error page, so :func:`install` wraps ``gunicorn.util.write_error``, the one
  function that writes it; a transfer coding it does not implement (its 501) is the
  client's to fix, so it is answered 400.

The codes are listed in docs/client-contract.md ("Errors").
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Callable
from typing import Any

import flask
from werkzeug.exceptions import HTTPException

from kiln import log
from kiln.http.responses import error_response

logger = log.get("ingress")

#: Status → (code, message) for what the server refuses before the function runs.
SERVER_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "The request is not valid HTTP/1.1 (a malformed request line or "
                         "header, or Content-Length together with Transfer-Encoding)."),
    403: ("forbidden", "This request is not allowed."),
    404: ("not_found", "No such endpoint."),
    405: ("method_not_allowed", "This endpoint does not take this method."),
    411: ("length_required", "Send a Content-Length."),
    413: ("body_too_large", "The body is too large."),
    414: ("uri_too_long", "The request line is too long."),
    417: ("expectation_failed", "Only 'Expect: 100-continue' is supported."),
    431: ("headers_too_large", "A header is too large (at most 8190 bytes each, 100 headers)."),
    500: ("internal", "Something went wrong on our side; try again later."),
}


def error_for(status: int) -> tuple[int, str, str]:
    """The (status, code, message) answered for a refusal the server makes with ``status``."""
    if status == 501:  # a transfer coding gunicorn does not implement: the client's to fix
        status = 400
    code, message = SERVER_ERRORS.get(status, ("bad_request" if status < 500 else "internal",
                                               "The request was refused."))
    return status, code, message


def http_exception(exc: HTTPException) -> flask.Response:
    """A werkzeug/Flask refusal (any ``HTTPException``) in the contract's shape."""
    status, code, message = error_for(exc.code or 500)
    headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    return error_response(status, code, message, headers)


def internal_error(exc: Exception) -> flask.Response:
    """An exception escaped the function (Flask has logged it): 500 in the contract's shape."""
    cause = getattr(exc, "original_exception", None) or exc
    log.event(logger, "unhandled exception", logging.ERROR, error=type(cause).__name__)
    status, code, message = error_for(500)
    return error_response(status, code, message)


def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error``, answering JSON instead of an HTML page."""
    import gunicorn.util

    status, code, message = error_for(status_int)
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


def install(errorhandler: Callable[[Any], Callable[[Any], Any]]) -> None:
    """Answer the framework's and the server's own refusals in the contract's shape.

    Call it from a function's module with ``functions_framework.errorhandler`` (bound to
    the app functions-framework is creating when it loads that module).
    """
    errorhandler(HTTPException)(http_exception)
    errorhandler(500)(internal_error)
    if flask.has_app_context():
        # functions-framework adds its catch-all routes after loading the module; without
        # this, "//x" would be a 308 redirect to "/x" (Flask's HTML page, no handler sees
        # it) instead of a 404 in the contract's shape.
        flask.current_app.url_map.merge_slashes = False
    try:
        import gunicorn.util
    except ImportError:  # pragma: no cover - functions-framework on Windows runs waitress
        return
    gunicorn.util.write_error = write_error
