"""HTTP API: thin. Parse, call the service, wrap in the envelope."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from .errors import BadRequest
from .http_errors import envelope
from .service import TokenService

bp = Blueprint("token", __name__)


def _service() -> TokenService:
    service: TokenService = current_app.extensions["pighand"].service
    return service


@bp.get("/token/<platform>/<appid>")
def get_token(platform: str, appid: str) -> Response:
    return envelope(_service().get(platform, appid).value)


@bp.put("/token/<platform>/<appid>")
def refresh_token(platform: str, appid: str) -> Response:
    stale = _stale_token()
    return envelope(_service().refresh(platform, appid, stale_token=stale).value)


@bp.get("/ticket/<platform>/<appid>/<ticket_type>")
def get_ticket(platform: str, appid: str, ticket_type: str) -> Response:
    return envelope(_service().get_ticket(platform, appid, ticket_type).value)


def _stale_token() -> str | None:
    """The token the caller found rejected: JSON ``stale_token`` (or the
    original service's ``nowToken``), or the same names in the query."""
    value: object = None
    raw = request.get_data(cache=False)
    if raw.strip():
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest('request body must be a JSON object like {"stale_token": "..."}')
        value = body.get("stale_token", body.get("nowToken"))
    if value is None:
        value = request.args.get("stale_token", request.args.get("nowToken"))
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest("stale_token must be a non-empty string")
    return value
