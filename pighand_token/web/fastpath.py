"""The hot path: a cached ``GET /token/<platform>/<appid>`` answered before
Flask is involved.

Most of a cached GET's cost is framework work (routing, request and response
objects, hooks), not the lookup. This WSGI layer answers the one case that is
all of the traffic in steady state: a known key in scope, a valid appid, and
a token the first tier (Redis, or the worker's memory without Redis) can
serve as it is. It does the same checks as the normal path and returns the
same bytes and headers; anything else (a miss, a refusal, a PUT, a ticket,
an error) goes through Flask unchanged, so behaviour is identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..adapters import prometheus
from ..core.auth import api_key_from, is_loopback
from ..core.domain import TokenKey, valid_appid
from ..logs import ACCESS, request_id
from .envelope import cache_control

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ROUTE = "/token/<platform>/<appid>"
_BODY_CACHE_SIZE = 1024
# Per token value: (expires_in, encoded envelope up to expires_in, body,
# Content-Length, Cache-Control).
_Answer = tuple[int, bytes, bytes, str, str]


class FastPath:
    def __init__(self, app: WSGIApp, container: Any) -> None:
        self.app = app
        self.container = container
        self.service = container.service
        self.clients = container.clients
        self.auth_required: bool = container.settings.auth_required
        self.margin_s: float = self.service.policy.margin_s
        self._answers: dict[str, _Answer] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        if environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith("/token/"):
            return self.app(environ, start_response)
        platform, _, appid = path[7:].partition("/")
        provider = self.service.providers.get(platform)
        if provider is None or "/" in appid or not valid_appid(appid) or provider.appid_error(appid):
            return self.app(environ, start_response)
        client_name = None
        if not self.auth_required and not is_loopback(environ.get("REMOTE_ADDR")):
            return self.app(environ, start_response)  # refused there
        if self.auth_required:
            key = api_key_from(environ)
            client = self.clients.known(key) if key else None
            if client is None or not client.allows(platform, appid):
                return self.app(environ, start_response)
            client_name = client.name
        token = self.service.cached(TokenKey(platform, appid))
        if token is None:
            return self.app(environ, start_response)

        _, _, body, length, caching = self._answer(token.value, token.expires_in(self.service.clock(), self.margin_s))
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", length),
                                  ("Cache-Control", caching), ("X-Request-Id", rid)])
        prometheus.http_request(ROUTE, "GET", 200)
        if ACCESS.enabled():
            ACCESS.cached_get(rid, environ.get("REMOTE_ADDR"), client_name, platform, appid, self.service.last_tier(),
                              started)
        return [body]

    def _answer(self, value: str, expires_in: int) -> _Answer:
        """The envelope of ``value`` with ``expires_in``: the value encoded once,
        the tail (``expires_in``, length, ``Cache-Control``) redone only when
        the whole second changes, never per request."""
        answer = self._answers.get(value)
        if answer is not None and answer[0] == expires_in:
            return answer
        if answer is None:
            if len(self._answers) >= _BODY_CACHE_SIZE:
                self._answers.clear()
            prefix = b'{"code":200,"data":' + json.dumps(value).encode() + b',"error":"","expires_in":'
        else:
            prefix = answer[1]
        body = prefix + str(expires_in).encode() + b"}"
        # One tuple, replaced whole: a thread reading it while another moves it
        # to the next second sees one consistent answer, never a body with
        # another's length.
        answer = self._answers[value] = (expires_in, prefix, body, str(len(body)), cache_control(expires_in))
        return answer
