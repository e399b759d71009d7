"""Ingress (HTTP): the webhook and app API. Answers in milliseconds; never generates."""

import flask
import functions_framework

from kiln.compose import check_environment, get_services
from kiln.http import framework
from kiln.http.api import handle

framework.install(functions_framework.errorhandler)
check_environment()  # a wrong setting stops the start, naming its variable


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return handle(request, get_services())
