"""The functions as the local stack runs them: the product's handlers, composed with the
development generators (``kiln_dev.providers``) so planted failures work.

Mirrors ``functions/*/main.py`` (which deploy the product alone); functions-framework
loads this file with ``--source`` and one of the targets below.
"""

from __future__ import annotations

import functools
import json
import threading

import flask
import functions_framework
from cloudevents.http import CloudEvent

from kiln import log, tracing
from kiln.compose import Services
from kiln.http import framework
from kiln.http.api import handle
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import handle_message
from kiln.settings import Settings
from kiln_dev.providers import DEV_PROVIDERS

_lock = threading.Lock()
framework.install(functions_framework.errorhandler)


@functools.cache
def _services() -> Services:
    settings = Settings.from_env()
    log.setup(settings.log_level)
    tracing.configure(settings)
    return Services(settings, providers=DEV_PROVIDERS)


def services() -> Services:
    """This process's services, from its environment (read once), built by the first call."""
    with _lock:
        return _services()


def reset_services() -> None:
    with _lock:
        _services.cache_clear()


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return handle(request, services())


@functions_framework.cloud_event
def worker(cloud_event: CloudEvent) -> None:
    handle_message(cloud_event.data, services())


@functions_framework.http
def sweeper(request: flask.Request) -> flask.Response:
    return flask.Response(json.dumps(sweep(services())), status=200, mimetype="application/json")
