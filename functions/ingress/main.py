"""Ingress (HTTP): the webhook and app API. Answers in milliseconds; never generates."""

import flask
import functions_framework

from kiln.ingress import handle
from kiln.services import get_services


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return handle(request, get_services())
