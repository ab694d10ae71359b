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
             headers: dict[str, str] | None = None, expires_in: int | None = None) -> Response:
    """The envelope; with ``expires_in`` (a token or ticket answer) the body
    ends with it and ``Cache-Control`` lets the caller cache the value that
    long. Errors are ``no-store``: a 502 or 503 must not be replayed by a
    cache after the cause is gone."""
    # Encoded by hand: the hot path answers the same bytes for every cached
    # GET (web/fastpath.py), and the shape is fixed.
    headers = dict(headers or {})
    if expires_in is not None:
        body = (f'{{"code":{status},"data":{json.dumps(data)},"error":{json.dumps(error)},'
                f'"expires_in":{expires_in}}}')
        headers.setdefault("Cache-Control", cache_control(expires_in))
    else:
        body = f'{{"code":{status},"data":{json.dumps(data)},"error":{json.dumps(error)}}}'
        if status >= 400:
            headers.setdefault("Cache-Control", "no-store")
    return Response(body, status=status, mimetype="application/json", headers=headers or None)


def cache_control(expires_in: int) -> str:
    # private: the token is the caller's (behind its key), never a shared cache's.
    return f"private, max-age={expires_in}"


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
