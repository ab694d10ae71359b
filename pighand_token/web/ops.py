"""Operations: liveness, readiness and metrics. /healthz and /readyz need no
key (they show no token, no secret and no address); /metrics, which lists
every app and its state, needs a key with the ``metrics`` scope wherever
``auth_required`` is on."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, g

from ..adapters import prometheus
from ..core.errors import Forbidden, PighandError
from .envelope import envelope

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


def _container() -> Any:
    return current_app.extensions["pighand"]


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; touches nothing."""
    return envelope("ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Every configured store answers and the keys open the stored secrets:
    503 naming the checks that fail, and nothing more (no key needed here, so
    hosts, users and messages go to the log only)."""
    container = _container()
    failed = []
    for name, ping in container.pings():
        try:
            ping()
        except PighandError as exc:
            failed.append(name)
            log.warning("not ready: %s: %s", name, exc.message)
    if failed:
        return envelope(None, 503, "not ready: " + ", ".join(failed))
    return envelope("ready")


@bp.get("/metrics")
def metrics() -> Response:
    from .api import api_key

    container = _container()
    if container.settings.auth_required:
        client = container.clients.authenticate(api_key())
        if not client.reads_metrics:
            raise Forbidden(f"client {client.name!r} may not read /metrics: add a key with the metrics scope "
                            "(pighand-token client add prometheus --app metrics)")
        g.client = client.name
    service = container.service

    def token_rows() -> list[tuple[str, str, float | None, str]]:
        try:
            return [(s.platform, s.appid, s.expires_in_s, s.state) for s in service.status()]
        except PighandError:
            return []  # a store is down: the request and call counters still answer

    body, content_type = prometheus.exposition(token_rows)
    # As prometheus-client names it, version= included: a mimetype would
    # make Werkzeug write its own header without the format's version.
    return Response(body, content_type=content_type)
