"""``/proxy/<platform>/<appid>/<path>``, any method: a platform API call
with the hub's token added (core/platform_proxy.py does the work).

Thin like the token routes: the same key and scope check, the request read
off the WSGI environ as it is (the body stays a stream, so Flask's 64 KiB
limit for the hub's own routes does not apply: ``proxy_max_body`` does),
the platform's answer streamed back. Calls other than GET (and HEAD) are
audited.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.routing import BaseConverter

from ..core.errors import PighandError
from ..core.platform_proxy import PlatformProxy, ProxyCall
from . import api

bp = Blueprint("proxy", __name__)
# The token routes' check: a key whose scope covers the app.
bp.before_request(api.authenticate)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
ROUTE = "/proxy/<platform>/<appid>/<proxied:path>"


class ProxiedPath(BaseConverter):
    """The rest of the path, whatever it holds (empty segments and leading
    slashes included): the proxy refuses what must not be sent with a 400
    of its own, where the stock ``path`` converter would answer 404."""

    regex = ".*"
    part_isolating = False


def _container() -> Any:
    return current_app.extensions["pighand"]


@bp.route(ROUTE, methods=METHODS)
def proxy(platform: str, appid: str, path: str) -> Response:
    environ = request.environ
    length_text = str(environ.get("CONTENT_LENGTH") or "").strip()
    chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
    call = ProxyCall(
        platform=platform, appid=appid, method=request.method, path=path,
        query_string=str(environ.get("QUERY_STRING", "")),
        headers=_headers(environ),
        body=environ.get("wsgi.input"),
        content_length=int(length_text) if length_text.isdigit() else None,
        chunked=chunked,
        raw_uri=environ.get("RAW_URI") or environ.get("REQUEST_URI"),
        client=g.get("client"),
    )
    audit = _container().audit if request.method not in ("GET", "HEAD") else None
    where = dict(client=g.get("client"), platform=platform, appid=appid, request_id=g.get("request_id"),
                 remote_addr=request.remote_addr)
    proxy: PlatformProxy = _container().proxy
    try:
        answer = proxy.forward(call)
    except PighandError as exc:
        if audit is not None:
            audit.record("proxy.call", f"{request.method} failed {exc.status}: {exc.message}", **where)
        raise
    if audit is not None:
        errcode = f" errcode {answer.errcode}" if answer.errcode else ""
        replayed = " (replayed with a new token)" if answer.replayed else ""
        audit.record("proxy.call", f"{request.method} {answer.path}: HTTP {answer.status}{errcode}{replayed}",
                     **where)
    response = Response(answer.body, status=answer.status, headers=answer.headers, direct_passthrough=True)
    if not any(name.lower() == "content-type" for name, _ in answer.headers):
        del response.headers["Content-Type"]  # not werkzeug's text/html default
    return response


def _headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """The caller's request headers, by their usual names."""
    headers = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append(("-".join(part.capitalize() for part in key[5:].split("_")), str(value)))
    if environ.get("CONTENT_TYPE"):
        headers.append(("Content-Type", str(environ["CONTENT_TYPE"])))
    return headers
