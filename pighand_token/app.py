"""The application factory."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from flask import Flask, Request, Response, current_app, g, request
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect

from . import cli
from .adapters import prometheus
from .bootstrap import bootstrap
from .config import Settings, load_settings
from .core.auth import is_loopback
from .core.errors import Forbidden
from .core.ports import Clock
from .core.proxies import TrustedProxies, parse_networks
from .core.service import ANSWERED_BY
from .logs import ACCESS, HideQuerySecrets, JsonFormatter, request_event, request_id
from .scheduler import RefreshScheduler
from .web import api, callbacks, envelope, openapi, ops, platform_proxy, status_page
from .web.fastpath import FastPath
from .web.proxies import ProxyHeaders

MAX_BODY_BYTES = 64 * 1024


class _Flask(Flask):
    def raise_routing_exception(self, request: Request) -> NoReturn:
        # Werkzeug answers some odd paths ("", "//") with a redirect to the
        # canonical URL, outside every error handler: answer 404 instead,
        # like any other path that names no route.
        if isinstance(request.routing_exception, RequestRedirect):
            raise NotFound()
        super().raise_routing_exception(request)


def create_app(settings: Settings | None = None, *, overrides: Mapping[str, Any] | None = None,
               clock: Clock = time.time) -> Flask:
    """Build the app. Connects to nothing: stores open on first use.

    Raises SettingsError (one line naming the setting) on a bad setting.
    """
    settings = settings or load_settings(overrides)
    configure_logging(settings.log_level)
    app = _Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Every answer is the envelope: no bare automatic OPTIONS answers (405
    # with Allow instead), and no redirect for a doubled slash (404 instead,
    # since merging could point at another app than the one asked for).
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    container = bootstrap(settings, clock=clock)
    app.extensions["pighand"] = container
    app.extensions["pighand_scheduler"] = RefreshScheduler(container)
    envelope.register(app)
    app.before_request(_request_id)
    app.after_request(_finish_request)
    app.register_blueprint(api.bp)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(status_page.bp)
    app.register_blueprint(ops.bp)
    app.url_map.converters["proxied"] = platform_proxy.ProxiedPath
    app.register_blueprint(platform_proxy.bp)
    cli.register(app)
    if settings.fast_path:
        app.wsgi_app = FastPath(app.wsgi_app, container)  # type: ignore[method-assign]
    if settings.trusted_proxies:  # outermost: the hot path and Flask see the caller's address
        proxies = TrustedProxies(parse_networks(settings.trusted_proxies))
        app.wsgi_app = ProxyHeaders(app.wsgi_app, proxies)  # type: ignore[method-assign]
    return app


def _request_id() -> None:
    g.started = time.perf_counter()
    ANSWERED_BY.set(None)
    g.request_id = request_id(request.headers.get("X-Request-Id"))
    if not current_app.extensions["pighand"].settings.auth_required and not is_loopback(request.remote_addr):
        # Without keys anyone who reaches the port gets every token; whatever
        # address the server was bound to, only this machine may ask.
        raise Forbidden("auth_required is off: only callers on this machine (loopback) are served")


def _finish_request(response: Response) -> Response:
    """X-Request-Id on every answer, the request counted, and one JSON log
    line (when the access logger is on)."""
    rid = g.get("request_id") or request_id(None)
    response.headers["X-Request-Id"] = rid
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    prometheus.http_request(route, request.method, response.status_code)
    if ACCESS.enabled():
        args = request.view_args or {}
        ACCESS.write(request_event(
            request_id=rid, remote_addr=request.remote_addr, client=g.get("client"), method=request.method,
            route=route,
            platform=args.get("platform"), appid=args.get("appid"), tier=ANSWERED_BY.get(),
            status=response.status_code, started=g.get("started")))
    return response


def start_background(app: Flask) -> None:
    """Start what a serving worker runs beside its requests: the follower of
    token changes that keeps its memory tier coherent, and the refresh timer
    (if the settings enable it). Called once per served worker process
    (``pighand-token serve``, gunicorn's post_worker_init), never by a command."""
    container = app.extensions["pighand"]
    container.changes.start()
    if container.settings.is_enable_schedule:
        app.extensions["pighand_scheduler"].start(app)


def stop_background(app: Flask) -> None:
    app.extensions["pighand_scheduler"].stop()
    app.extensions["pighand"].changes.stop()


def configure_logging(level: str) -> None:
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, HideQuerySecrets) for f in urllib3_log.filters):
        urllib3_log.addFilter(HideQuerySecrets())
    logger = logging.getLogger("pighand_token")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
