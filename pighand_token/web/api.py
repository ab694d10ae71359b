"""HTTP API: thin. Authenticate, parse, call the service, wrap in the
envelope."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from ..core.auth import api_key_from
from ..core.domain import Token
from ..core.errors import BadRequest, PighandError
from ..core.service import TokenService
from .envelope import envelope

bp = Blueprint("token", __name__)


def _container() -> Any:
    return current_app.extensions["pighand"]


def _service() -> TokenService:
    service: TokenService = _container().service
    return service


def api_key() -> str | None:
    return api_key_from(request.environ)


@bp.before_request
def authenticate() -> None:
    """Every token route (and the proxy) needs a key whose scope covers the
    app, unless ``auth_required`` is off (development, loopback only)."""
    container = _container()
    g.client = None
    if not container.settings.auth_required:
        return
    client = container.clients.authenticate(api_key())
    args = request.view_args or {}
    container.clients.authorize(client, str(args.get("platform", "")), str(args.get("appid", "")))
    g.client = client.name


@bp.get("/token/<platform>/<appid>")
def get_token(platform: str, appid: str) -> Response:
    return _answer(_service().get(platform, appid))


@bp.put("/token/<platform>/<appid>")
def refresh_token(platform: str, appid: str) -> Response:
    stale = _stale_token()
    audit = _container().audit
    where = dict(client=g.client, platform=platform, appid=appid, request_id=g.get("request_id"),
                 remote_addr=request.remote_addr)
    try:
        token = _service().refresh(platform, appid, stale_token=stale, caller=g.client or "anonymous")
    except PighandError as exc:
        if exc.status == 404:  # no such app (or platform): anyone may invent appids
            audit.record_refusal("token.refresh", exc.status, exc.message, **where)
        else:
            audit.record("token.refresh", f"failed {exc.status}: {exc.message}", **where)
        raise
    audit.record("token.refresh", "ok", **where)
    return _answer(token)


@bp.get("/ticket/<platform>/<appid>/<ticket_type>")
def get_ticket(platform: str, appid: str, ticket_type: str) -> Response:
    return _answer(_service().get_ticket(platform, appid, ticket_type))


def _answer(token: Token) -> Response:
    """The token (or ticket) and how many whole seconds it will still be served."""
    return envelope(token.value, expires_in=_service().expires_in(token))


def _stale_token() -> str | None:
    """The token the caller found rejected: JSON ``stale_token`` (or the
    original service's ``nowToken``), or the same names in the query."""
    given: list[tuple[str, object]] = []
    raw = request.get_data(cache=False)
    if raw.strip():
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than the parser allows.
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest('request body must be a JSON object like {"stale_token": "..."}')
        given += [(name, body[name]) for name in ("stale_token", "nowToken") if name in body]
    given += [(f"{name} (query)", value) for name in ("stale_token", "nowToken")
              for value in request.args.getlist(name)]
    # Named but null or empty is a mistake, not "no stale token": a bare PUT
    # would force a new token on everyone.
    for name, value in given:
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{name} must be a non-empty string")
    values = {value for _, value in given}
    if len(values) > 1:
        # Which one the caller meant is a guess, and a wrong guess either
        # replaces a good token or keeps a rejected one.
        raise BadRequest("stale_token given more than once with different values: "
                         + ", ".join(name for name, _ in given))
    return str(values.pop()) if values else None


# -- third-party apps: the authorization page, and codes it redirected with ----
@bp.get("/authorize/<platform>/<appid>")
def authorization_page(platform: str, appid: str) -> Response:
    redirect_uri = request.args.get("redirect_uri", "")
    if not redirect_uri.startswith(("https://", "http://")):
        raise BadRequest("redirect_uri (the page the platform sends the account back to, with auth_code) "
                         "must be an http(s) URL")
    return envelope(_container().callbacks.authorization_url(platform, appid, redirect_uri, request.args))


@bp.post("/authorize/<platform>/<appid>")
def authorize(platform: str, appid: str) -> Response:
    try:
        body = json.loads(request.get_data(cache=False) or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    code = body.get("auth_code") if isinstance(body, dict) else None
    if not isinstance(code, str) or not code:
        raise BadRequest('request body must be {"auth_code": "<the code the authorization page redirected with>"}')
    account = _container().callbacks.authorize(platform, appid, code, client=g.client,
                                               request_id=g.get("request_id"), remote_addr=request.remote_addr)
    return envelope(account)
