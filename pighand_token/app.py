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

from . import api, cli, http_errors
from .bootstrap import bootstrap
from .config import Settings, load_settings
from .ports import Clock
from .scheduler import RefreshScheduler

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
    app.json.sort_keys = False  # type: ignore[attr-defined]
    container = bootstrap(settings, clock=clock)
    app.extensions["pighand"] = container
    app.extensions["pighand_scheduler"] = RefreshScheduler(container)
    http_errors.register(app)
    app.before_request(_request_id)
    app.after_request(_echo_request_id)
    app.register_blueprint(api.bp)
    cli.register(app)
    return app


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id() -> None:
    """The caller's X-Request-Id when it is sane, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    g.request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _echo_request_id(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id") or uuid.uuid4().hex
    return response


def start_scheduler(app: Flask) -> None:
    """Start the refresh timer in this process, if the settings enable it
    (gunicorn calls this in each worker after it boots)."""
    container = app.extensions["pighand"]
    if container.settings.is_enable_schedule:
        app.extensions["pighand_scheduler"].start(app)


def stop_scheduler(app: Flask) -> None:
    app.extensions["pighand_scheduler"].stop()


class _HideQuerySecrets(logging.Filter):
    """urllib3 logs every request line, query string included, at DEBUG: a
    root logger at DEBUG would print WeChat's ?secret= and WeCom's
    ?corpsecret=, or a ticket call's access_token."""

    PATTERN = re.compile(r"((?:secret|corpsecret|appsecret|app_secret|access_token)=)[^&\s\"']+", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            record.msg, record.args = self.PATTERN.sub(r"\1***", message), None
        return True


def configure_logging(level: str) -> None:
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _HideQuerySecrets) for f in urllib3_log.filters):
        urllib3_log.addFilter(_HideQuerySecrets())
    logger = logging.getLogger("pighand_token")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
