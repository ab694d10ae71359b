"""The application factory."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask

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
    app.register_blueprint(api.bp)
    cli.register(app)
    return app


def start_scheduler(app: Flask) -> None:
    """Start the refresh timer in this process, if the settings enable it
    (gunicorn calls this in each worker after it boots)."""
    container = app.extensions["pighand"]
    if container.settings.is_enable_schedule:
        app.extensions["pighand_scheduler"].start(app)


def stop_scheduler(app: Flask) -> None:
    app.extensions["pighand_scheduler"].stop()


def configure_logging(level: str) -> None:
    logger = logging.getLogger("pighand_token")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
