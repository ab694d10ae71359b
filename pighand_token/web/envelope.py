"""The envelope every answer is wrapped in, and the error handlers that map
every failure to it: ``{"code": <http status>, "data": ..., "error": "..."}``."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..core.errors import PighandError

log = logging.getLogger(__name__)


def envelope(data: str | None, status: int = 200, error: str = "",
             headers: dict[str, str] | None = None) -> Response:
    # Encoded by hand: the hot path serves this for every cached GET, and the
    # shape is fixed.
    body = f'{{"code":{status},"data":{json.dumps(data)},"error":{json.dumps(error)}}}'
    return Response(body, status=status, mimetype="application/json", headers=headers)


def _pighand_error(exc: PighandError) -> Response:
    if exc.status >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message)
    return envelope(None, exc.status, exc.message, headers=exc.headers or None)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers: dict[str, str] = {}
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    message = {
        404: "not found: the API is GET/PUT /token/<platform>/<appid>",
        405: "method not allowed",
        413: "request body too large",
    }.get(status, (exc.description or exc.name or "error").strip())
    return envelope(None, status, message, headers=headers or None)


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error")
    return envelope(None, 500, "internal error; it has been logged")


def register(app: Flask) -> None:
    app.register_error_handler(PighandError, _pighand_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
