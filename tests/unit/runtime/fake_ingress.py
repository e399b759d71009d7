"""The ingress as functions-framework serves it (its Flask app, its routes, the error
handlers of ``kiln.http.framework``) over a Kiln of fakes; load it with
``functions_framework.create_app(target="ingress", source=__file__)``. Its rig is
``sys.modules["fake_ingress"].RIG``."""

from __future__ import annotations

import flask
import functions_framework
from rig import build_rig

from kiln.http import framework
from kiln.http.api import handle

RIG = build_rig()
framework.install(functions_framework.errorhandler)


@functions_framework.http
def ingress(request: flask.Request) -> flask.Response:
    return handle(request, RIG.services)
