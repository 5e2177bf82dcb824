"""The doodle web app: draw, predict, correct; serves the production model and swaps in new ones live."""
from __future__ import annotations

import json
import logging

from flask import current_app, jsonify, request
from flask_openapi3 import Info, OpenAPI
from pydantic import ValidationError
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed

from doodle_lib.settings import get_settings

MAX_BODY_BYTES = 16 * 1024 * 1024  # a 10 MB image in base64 fits; anything larger is refused unread
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def create_app(test_config: dict | None = None) -> OpenAPI:
    """The app factory: flaskr style, with settings from the environment and a mapping for tests."""
    app = OpenAPI(
        __name__,
        info=Info(title="Doodle classifier", version="1.0.0", description="Predict Quick, Draw! doodles; send feedback."),
        validation_error_status=422,
        validation_error_callback=validation_error,
        security_schemes={},  # none; left unset, flask-openapi3 writes null, which OpenAPI does not allow
    )
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        MODEL_WATCH=True,  # load the production model and watch the registry; tests of pure validation turn it off
        REGISTRY_TIMEOUT_SECONDS=5,
    )
    if test_config:
        app.config.from_mapping(test_config)
    app.config.setdefault("SETTINGS", get_settings())
    app.json.sort_keys = False
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")

    from webapp import api, health, metrics, pages, pipeline, proposals, webhooks
    from webapp.holder import ModelHolder

    ModelHolder().init_app(app)
    metrics.init_app(app)
    app.register_api(api.api)
    app.register_api(proposals.api)
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    pipeline.init_app(app)
    app.register_error_handler(HTTPException, http_error)
    app.wsgi_app = StalledBodies(KnownMethods(app.wsgi_app), app.config["SETTINGS"].webapp_body_timeout)
    return app


class StalledBodies:
    """WSGI middleware: a request body that stops arriving for `seconds` ends in a 408 (http_error) instead of holding
    its connection, one of the worker's `worker_connections`, until the client goes. gunicorn bounds the wait for a
    request's head (keepalive), not for its body; without a buffering proxy in front, the app bounds it."""

    def __init__(self, wsgi_app, seconds: float):
        self.wsgi_app, self.seconds = wsgi_app, seconds

    def __call__(self, environ, start_response):
        client = environ.get("gunicorn.socket")
        if client is None:  # another server: its own limits apply
            return self.wsgi_app(environ, start_response)
        before = client.gettimeout()
        client.settimeout(self.seconds)  # each read of the body may wait this long (gevent's sockets honour it)
        try:
            return self.wsgi_app(environ, start_response)
        finally:
            client.settimeout(before)


class KnownMethods:
    """WSGI middleware: a method HTTP does not define is a bad request, answered before Flask sees it.
    prometheus-flask-exporter labels its series by method, so every made-up method would otherwise add series for
    good. (400, not 501: a client's mistake, which the error-rate alert must not count.)"""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        if method in HTTP_METHODS:
            return self.wsgi_app(environ, start_response)
        body = json.dumps({"error": f"{method[:20]!r} is not an HTTP method: use GET or POST"}).encode()
        start_response("400 Bad Request", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def validation_error(error: ValidationError):
    """A 422 whose message names each field that is wrong and why."""
    # Field names are the client's own (an unknown key can be any length): each shown in at most 40 characters.
    problems = [f"{'.'.join(str(p)[:40] for p in e['loc']) or 'body'}: {plain(e)}" for e in error.errors()[:5]]
    more = f" (and {error.error_count() - 5} more)" if error.error_count() > 5 else ""
    response = jsonify(error="; ".join(problems) + more)
    response.status_code = 422
    return response


def plain(problem: dict) -> str:
    """pydantic's message for one problem, put plainly where it is not (the page shows it to people drawing)."""
    if problem["type"] == "too_long":  # "List should have at most 512 items after validation, not 520"
        return f"too many: {problem['ctx']['actual_length']} (at most {problem['ctx']['max_length']})"
    return problem["msg"]


def http_error(error: HTTPException):
    """Errors as JSON with a message, for API clients and the page's script alike."""
    message = error.description or error.name
    if error.code == 413:
        message = f"the body is too large: at most {MAX_BODY_BYTES} bytes"
    if error.code == 404:
        message = f"nothing at {request.path[:100]!r}: the API's paths are in /openapi/openapi.json"
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        message = f"{request.method} is not allowed here: use {', '.join(error.valid_methods)}"
    stalled = isinstance(error, ClientDisconnected) and isinstance(error.__context__, TimeoutError)
    if stalled:  # Werkzeug's reader turns the socket's timeout into a disconnect
        seconds = current_app.config["SETTINGS"].webapp_body_timeout
        message = f"the request body stopped arriving: nothing came for {seconds:g} s"
    response = jsonify(error=message)
    response.status_code = 408 if stalled else error.code or 500
    response.headers.extend((name, value) for name, value in error.get_headers() if name == "Allow")
    return response
