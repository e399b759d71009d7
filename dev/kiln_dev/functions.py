"""The functions as the local stack runs them: the product's handlers, composed with the
development generators (``kiln_dev.providers``) so planted failures work.

Mirrors ``functions/*/main.py`` (which deploy the product alone); functions-framework
loads this file with ``--source`` and one of the targets below.
"""

from __future__ import annotations

import json
import threading

import flask
import functions_framework
from cloudevents.http import CloudEvent

from kiln import log
from kiln.compose import Services
from kiln.http.api import handle
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import handle_message
from kiln.settings import Settings
from kiln_dev.providers import DEV_PROVIDERS

_services: Services | None = None
_lock = threading.Lock()


def services() -> Services:
    """This process's services, from its environment, built on first call."""
    global _services
    with _lock:
        if _services is None:
            settings = Settings.from_env()
            log.setup(settings.log_level)
            _services = Services(settings, providers=DEV_PROVIDERS)
        return _services


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return handle(request, services())


@functions_framework.cloud_event
def worker(cloud_event: CloudEvent) -> None:
    handle_message(cloud_event.data, services())


@functions_framework.http
def sweeper(request: flask.Request) -> flask.Response:
    return flask.Response(json.dumps(sweep(services())), status=200, mimetype="application/json")
