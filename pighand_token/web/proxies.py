"""The outermost WSGI layer when ``trusted_proxies`` is set: ``REMOTE_ADDR``
becomes the caller's address, once per request, before the hot path and
Flask read it (the loopback rule, the access log, the audit log all see the
caller, not the proxy). The connection's own address stays in
``environ["pighand.peer_addr"]``.

Not werkzeug's ``ProxyFix``: it believes a fixed number of right-most
``X-Forwarded-For`` hops from any peer, so a caller that reaches the port
directly could name any address; here the peer must be a trusted one.
Without ``trusted_proxies`` this layer is not installed at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..core.proxies import TrustedProxies

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

PEER_KEY = "pighand.peer_addr"


class ProxyHeaders:
    def __init__(self, app: WSGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR")
        client = self.proxies.client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"),
                                             environ.get("HTTP_X_REAL_IP"))
        environ[PEER_KEY] = peer
        if client != peer:
            environ["REMOTE_ADDR"] = client
        return self.app(environ, start_response)
