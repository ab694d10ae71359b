"""The application factory."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, request

from . import api, cli, http_errors, openapi, ops, status_page
from .adapters import prometheus
from .bootstrap import bootstrap
from .config import Settings, load_settings
from .fastpath import FastPath
from .logs import HideQuerySecrets, JsonFormatter
from .ports import Clock
from .scheduler import RefreshScheduler
from .service import ANSWERED_BY

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings | None = None, *, overrides: Mapping[str, Any] | None = None,
               clock: Clock = time.time) -> Flask:
    """Build the app. Connects to nothing: stores open on first use.

    Raises SettingsError (one line naming the setting) on a bad setting.
    """
    settings = settings or load_settings(overrides)
    configure_logging(settings.log_level)
    app = Flask(__name__, static_folder=None)
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
    http_errors.register(app)
    app.before_request(_request_id)
    app.after_request(_finish_request)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(status_page.bp)
    app.register_blueprint(ops.bp)
    cli.register(app)
    if settings.fast_path:
        app.wsgi_app = FastPath(app.wsgi_app, container)  # type: ignore[method-assign]
    return app


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


_ACCESS = logging.getLogger("pighand_token.access")


def _request_id() -> None:
    """The caller's X-Request-Id when it is sane, else a new one."""
    g.started = time.perf_counter()
    ANSWERED_BY.set(None)
    given = request.headers.get("X-Request-Id", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _finish_request(response: Response) -> Response:
    """X-Request-Id on every answer, the request counted, and one JSON log
    line (when the access logger is on)."""
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers["X-Request-Id"] = request_id
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    prometheus.http_request(route, request.method, response.status_code)
    if _ACCESS.isEnabledFor(logging.INFO):
        args = request.view_args or {}
        started = g.get("started")
        _ACCESS.info("request", extra={"event": {
            "kind": "request", "request_id": request_id, "client": g.get("client"), "method": request.method,
            "route": route, "platform": args.get("platform"), "appid": args.get("appid"),
            "tier": ANSWERED_BY.get(), "status": response.status_code,
            "duration_ms": None if started is None else round((time.perf_counter() - started) * 1000, 2)}})
    return response


def start_scheduler(app: Flask) -> None:
    """Start the refresh timer in this process, if the settings enable it
    (gunicorn calls this in each worker after it boots)."""
    container = app.extensions["pighand"]
    if container.settings.is_enable_schedule:
        app.extensions["pighand_scheduler"].start(app)


def stop_scheduler(app: Flask) -> None:
    app.extensions["pighand_scheduler"].stop()


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
