"""Ingress (HTTP): the webhook and app API. Answers in milliseconds; never generates."""

import flask
import functions_framework

from kiln.compose import get_services
from kiln.http import framework
from kiln.http.api import handle

framework.install(functions_framework.errorhandler)


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return handle(request, get_services())
