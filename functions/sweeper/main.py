"""Sweeper (HTTP, called by Cloud Scheduler every minute): ends what was left behind."""

import json

import flask
import functions_framework

from kiln.compose import check_environment, get_services
from kiln.runtime.sweeper import sweep

check_environment()  # a wrong setting stops the start, naming its variable


@functions_framework.http
def sweeper(request: flask.Request) -> flask.Response:
    report = sweep(get_services())
    return flask.Response(json.dumps(report), status=200, mimetype="application/json")
