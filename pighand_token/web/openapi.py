"""``GET /openapi.json``: an OpenAPI 3.1 document of the HTTP API.

Built for the app that serves it, at request time: the platform enum is the
app's registered platforms, security applies only when the app asks for a
key, and only the routes the app really serves are listed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from ..core.domain import APPID_PATTERN

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
APPID_REGEX = f"^{APPID_PATTERN.pattern}$"
REQUEST_ID_REGEX = "^[A-Za-z0-9._:-]{1,64}$"
DEFAULT_TICKET_TYPES = ("jsapi", "wx_card")
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
EXAMPLE_PLATFORM = "wechat"
EXAMPLE_APPID = "wx1234567890abcdef"
EXAMPLE_TOKEN = "83_Xk2example"

Json = dict[str, Any]
Route = tuple[str, str]

_STATUS_TEXT = {
    400: "Bad request: a malformed appid (`[A-Za-z0-9_.:-]{1,128}` plus the platform's own form), a body "
         "that is not a JSON object, or a `stale_token` that is not a non-empty string.",
    401: "No API key, or an unknown or revoked one.",
    403: "The key's scope does not cover this app.",
    404: "Unknown platform (the message lists the supported ones), no credential for the appid, or an unknown "
         "ticket type.",
    405: "Method not allowed on this path; `Allow` lists the methods that are.",
    413: "Request body over 64 KiB.",
    429: "Too many refreshes that reach the platform for this client and app, or WeChat's `force_refresh` "
         "limits.",
    500: "Anything unexpected (logged; no trace is sent).",
    502: "The platform refused: its errcode and message (never the secret). During a cooldown after a failed "
         "call, with `Retry-After`.",
    503: "A store is unavailable, or another worker's refresh took too long.",
    504: "The platform did not answer within `upstream_timeout`.",
}

_NAMES = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    413: "PayloadTooLarge", 429: "TooManyRequests", 500: "InternalError", 502: "BadGateway",
    503: "Unavailable", 504: "GatewayTimeout",
}


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The document for this app; no key needed."""
    return jsonify(document_for(current_app))


def document_for(app: Flask) -> Json:
    """The OpenAPI document describing ``app`` as it is configured."""
    container = app.extensions["pighand"]
    service = container.service
    ticket_types: dict[str, tuple[str, ...]] = {}
    for name in service.platforms():
        types = tuple(getattr(service.providers.get(name), "ticket_types", ()) or ())
        if types:
            ticket_types[name] = types
    return build_document(
        platforms=service.platforms(),
        ticket_types=ticket_types,
        auth_required=bool(container.settings.auth_required),
        routes=app_routes(app),
    )


def app_routes(app: Flask) -> set[Route]:
    """``(path, method)`` for every route ``app`` serves, paths in OpenAPI
    form (``/token/{platform}/{appid}``), HEAD and OPTIONS left out."""
    routes: set[Route] = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods or ():
            if method not in IGNORED_METHODS:
                routes.add((openapi_path(rule.rule), method.lower()))
    return routes


def openapi_path(rule: str) -> str:
    """``/ticket/<platform>/<path:x>`` -> ``/ticket/{platform}/{x}``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def build_document(*, platforms: Sequence[str], ticket_types: Mapping[str, Sequence[str]],
                   auth_required: bool, routes: Collection[Route] | None = None) -> Json:
    """The document for an app with these platforms (and, per platform, its
    ticket types) that does or does not ask for a key. With ``routes``, only
    the operations among them are listed; without, every operation the
    service defines."""
    secured: list[Json] = [{"bearerAuth": []}, {"apiKeyAuth": []}] if auth_required else []
    operations = _operations(sorted(platforms), ticket_types, auth_required, secured)
    paths: Json = {}
    for path, method, operation in operations:
        if routes is None or (path, method) in routes:
            paths.setdefault(path, {})[method] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "pighand-token",
            "version": _version(),
            "summary": "Third-party platform access tokens, fetched once, stored and refreshed before they "
                       "expire.",
            "description": _description(auth_required),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "tokens", "description": "Platform access tokens and tickets."},
            {"name": "operations", "description": "Health, readiness, metrics and the status page."},
            {"name": "meta", "description": "This document."},
        ],
        "paths": paths,
        "components": _components(),
    }


def _description(auth_required: bool) -> str:
    auth = ("This server requires an API key on the token, ticket and status-page routes: send "
            "`Authorization: Bearer <key>` or `X-Api-Key: <key>`, and `/metrics` one with the `metrics` scope. "
            "`/healthz`, `/readyz` and `/openapi.json` need none."
            if auth_required else
            "This server runs with `auth_required` off: no route needs a key. With it on, the token, ticket "
            "and status-page routes take `Authorization: Bearer <key>` or `X-Api-Key: <key>`, and `/metrics` "
            "a key with the `metrics` scope.")
    return (
        "Every JSON answer, errors included, is the envelope "
        '`{"code": <HTTP status>, "data": <token or null>, "error": "<message>"}`. '
        "Every answer carries `X-Request-Id`: the caller's own when it matches `[A-Za-z0-9._:-]{1,64}`, "
        "else a new one. A method a path does not allow is answered 405 with `Allow`; an unknown path 404; "
        "a body over 64 KiB 413.\n\n" + auth
    )


def _version() -> str:
    try:
        return metadata.version("pighand-token")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


# -- operations ------------------------------------------------------------------
def _operations(platforms: list[str], ticket_types: Mapping[str, Sequence[str]], auth_required: bool,
                secured: list[Json]) -> Iterable[tuple[str, str, Json]]:
    auth_statuses = [401, 403] if auth_required else []
    platform = _param("platform", "path", "A registered platform.", {"type": "string", "enum": platforms},
                      example=EXAMPLE_PLATFORM if EXAMPLE_PLATFORM in platforms else None)
    appid = _param("appid", "path", "The app's id on the platform; some platforms add their own form "
                   "(WeCom `<corpid>:<agentid>`, Alipay `<app_id>:<auth_app_id>`).",
                   {"type": "string", "pattern": APPID_REGEX}, example=EXAMPLE_APPID)
    ticket_platforms = sorted(ticket_types) or platforms
    all_types = sorted({t for types in ticket_types.values() for t in types}) or list(DEFAULT_TICKET_TYPES)
    ticket_platform = _param("platform", "path", "A platform that issues tickets.",
                             {"type": "string", "enum": ticket_platforms},
                             example=EXAMPLE_PLATFORM if EXAMPLE_PLATFORM in ticket_platforms else None)
    ticket_type = _param("ticket_type", "path", "`jsapi`: the JS-SDK `jsapi_ticket`; `wx_card`: the card "
                         "`api_ticket`.", {"type": "string", "enum": all_types}, example=all_types[0])
    request_id = {"$ref": "#/components/parameters/RequestId"}
    token_errors = [400, *auth_statuses, 404, 500, 502, 503, 504]

    yield "/token/{platform}/{appid}", "get", {
        "tags": ["tokens"],
        "operationId": "getToken",
        "summary": "The current token",
        "description": "Served from Redis, the worker's memory or the SQL store, and fetched from the platform "
                       "only when none holds a valid one (one call across every worker and instance).",
        "parameters": [platform, appid, request_id],
        "security": secured,
        "responses": _responses(_ok("The current token.", "Token"), token_errors),
    }
    yield "/token/{platform}/{appid}", "put", {
        "tags": ["tokens"],
        "operationId": "refreshToken",
        "summary": "Replace the token",
        "description": "Without a stale token: a new token from the platform, stored in every tier. With "
                       "`stale_token` (the token a platform API rejected): the current token if it is "
                       "already a different one (no platform call), else a new one. The body's fields take "
                       "precedence over the query's.",
        "parameters": [
            platform, appid,
            _param("stale_token", "query", "The token a platform API rejected.", {"type": "string", "minLength": 1}),
            _param("nowToken", "query", "The original service's name for `stale_token`.",
                   {"type": "string", "minLength": 1}, deprecated=True),
            request_id,
        ],
        "requestBody": {
            "required": False,
            "description": "Optional. A JSON object naming the token a platform API rejected.",
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/StaleToken"},
                "example": {"stale_token": EXAMPLE_TOKEN},
            }},
        },
        "security": secured,
        "responses": _responses(_ok("The current or a new token.", "Token"),
                                [400, *auth_statuses, 404, 413, 429, 500, 502, 503, 504]),
    }
    yield "/ticket/{platform}/{appid}/{ticket_type}", "get", {
        "tags": ["tokens"],
        "operationId": "getTicket",
        "summary": "A ticket made with the managed token",
        "description": "The WeChat JS-SDK `jsapi_ticket` or card `api_ticket`, cached with its own expiry "
                       "like a token. If the platform rejects the token, it is replaced once and the ticket "
                       "asked for again.",
        "parameters": [ticket_platform, appid, ticket_type, request_id],
        "security": secured,
        "responses": _responses(_ok("The current ticket.", "Token"),
                                [400, *auth_statuses, 404, 429, 500, 502, 503, 504]),
    }
    yield "/healthz", "get", {
        "tags": ["operations"],
        "operationId": "healthz",
        "summary": "Liveness",
        "description": "The process answers; touches no store.",
        "parameters": [request_id],
        "security": [],
        "responses": _responses(_ok("Alive.", "Data"), [500]),
    }
    yield "/readyz", "get", {
        "tags": ["operations"],
        "operationId": "readyz",
        "summary": "Readiness",
        "description": "Every configured store (SQL, Redis) answers. 503 names the ones that do not.",
        "parameters": [request_id],
        "security": [],
        "responses": _responses(_ok("Every store answers.", "Data"), [500], {
            "503": {
                "description": "Not ready: the error names each store that failed and why.",
                "headers": _headers(),
                "content": _json(_error_schema(503)),
            },
        }),
    }
    yield "/metrics", "get", {
        "tags": ["operations"],
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "description": "The Prometheus text exposition: requests, token lookups by tier, platform calls, "
                       "refresh latency, seconds until expiry, lock waits, scheduler ticks. No token or "
                       "secret appears."
                       + (" It lists every app and its state, so it needs a key with the `metrics` scope "
                          "(`pighand-token client add prometheus --app metrics`), sent as a bearer token."
                          if auth_required else ""),
        "parameters": [request_id],
        "security": secured,
        "responses": _responses({
            "description": "Metrics in the Prometheus text format.",
            "headers": _headers(),
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }, [*auth_statuses, 500]),
    }
    page_errors: Json = {"500": _html("Anything unexpected, as a page (logged; no trace is sent)."),
                         "503": _html("A store is unavailable, as a page naming it.")}
    if auth_required:
        page_errors["401"] = _html("No API key, or an unknown or revoked one, as a page saying how to send one.",
                                   {"WWW-Authenticate": "WWWAuthenticate"})
    yield "/", "get", {
        "tags": ["operations"],
        "operationId": "statusPage",
        "summary": "Status page",
        "description": "One HTML page: each credential's platform and appid, token state, expiry, last "
                       "refresh and last platform error; no token or secret. Errors are pages too."
                       + (" Needs a key; the page lists only the apps in the key's scope." if auth_required
                          else ""),
        "parameters": [request_id],
        "security": secured,
        "responses": _responses(_html("The status page."), [], page_errors),
    }
    yield "/openapi.json", "get", {
        "tags": ["meta"],
        "operationId": "openapi",
        "summary": "This document",
        "description": "The OpenAPI 3.1 document of this server, for its platforms and its `auth_required`.",
        "parameters": [request_id],
        "security": [],
        "responses": _responses({
            "description": "The OpenAPI document.",
            "headers": _headers(),
            "content": _json({"type": "object", "required": ["openapi", "info", "paths"]}),
        }, [500]),
    }


def _param(name: str, where: str, description: str, schema: Json, *, deprecated: bool = False,
           example: str | None = None) -> Json:
    param: Json = {"name": name, "in": where, "required": where == "path", "description": description,
                   "schema": schema}
    if deprecated:
        param["deprecated"] = True
    if example is not None:
        param["example"] = example
    return param


def _ok(description: str, schema: str) -> Json:
    return {"description": description, "headers": _headers(),
            "content": _json({"$ref": f"#/components/schemas/{schema}"})}


def _html(description: str, headers: Mapping[str, str] | None = None) -> Json:
    return {"description": description, "headers": _headers(headers),
            "content": {"text/html": {"schema": {"type": "string"}}}}


def _responses(ok: Json, errors: Iterable[int], extra: Mapping[str, Json] | None = None) -> Json:
    responses: Json = {"200": ok}
    for status in errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{_NAMES[status]}"}
    responses.update(extra or {})
    return dict(sorted(responses.items()))


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _headers(extra: Mapping[str, str] | None = None) -> Json:
    """``X-Request-Id``, plus ``{header: component}`` for the others."""
    names = {"X-Request-Id": "RequestId", **(extra or {})}
    return {name: {"$ref": f"#/components/headers/{component}"} for name, component in names.items()}


def _error_schema(status: int) -> Json:
    return {"allOf": [
        {"$ref": "#/components/schemas/Envelope"},
        {"properties": {"code": {"const": status}, "data": {"type": "null"}, "error": {"minLength": 1}}},
    ]}


# -- components --------------------------------------------------------------------
def _components() -> Json:
    responses: Json = {}
    for status, name in _NAMES.items():
        headers = {
            401: _headers({"WWW-Authenticate": "WWWAuthenticate"}),
            405: _headers({"Allow": "Allow"}),
            429: _headers({"Retry-After": "RetryAfterRequired"}),
            502: _headers({"Retry-After": "RetryAfter"}),
        }.get(status, _headers())
        responses[name] = {"description": _STATUS_TEXT[status], "headers": headers,
                           "content": _json(_error_schema(status))}
    return {
        "schemas": {
            "Envelope": {
                "type": "object",
                "description": "Every JSON answer: `code` repeats the HTTP status, `data` is the token (or "
                               "null on an error), `error` the message (empty on success).",
                "required": ["code", "data", "error"],
                "properties": {
                    "code": {"type": "integer", "minimum": 100, "maximum": 599},
                    "data": {"type": ["string", "null"]},
                    "error": {"type": "string"},
                },
                "additionalProperties": False,
            },
            "Data": {
                "description": "A successful envelope.",
                "allOf": [
                    {"$ref": "#/components/schemas/Envelope"},
                    {"properties": {"code": {"const": 200}, "data": {"type": "string"}, "error": {"const": ""}}},
                ],
            },
            "Token": {
                "description": "A successful envelope whose `data` is the token (or ticket).",
                "allOf": [
                    {"$ref": "#/components/schemas/Data"},
                    {"properties": {"data": {"minLength": 1}}},
                ],
            },
            "StaleToken": {
                "type": "object",
                "description": "The token a platform API rejected (WeChat 40001/40014/42001 and the like). "
                               "Both fields are optional; `stale_token` wins over `nowToken`.",
                "properties": {
                    "stale_token": {"type": "string", "minLength": 1},
                    "nowToken": {"type": "string", "minLength": 1, "deprecated": True,
                                 "description": "The original service's name for `stale_token`."},
                },
            },
        },
        "responses": responses,
        "parameters": {
            "RequestId": {
                "name": "X-Request-Id",
                "in": "header",
                "required": False,
                "description": "Echoed back on the answer and written to the logs and the audit trail when it "
                               f"matches `{REQUEST_ID_REGEX}`; any other value is replaced by a new id.",
                "schema": {"type": "string"},
            },
        },
        "headers": {
            "RequestId": _header("The caller's request id, or a new one.", {"type": "string"}, required=True),
            "RetryAfter": _header("Seconds to wait before asking again.", {"type": "integer", "minimum": 1}),
            "RetryAfterRequired": _header("Seconds to wait before asking again.",
                                          {"type": "integer", "minimum": 1}, required=True),
            "WWWAuthenticate": _header("`Bearer realm=\"pighand-token\"`.", {"type": "string"}, required=True),
            "Allow": _header("The methods the path allows.", {"type": "string"}),
        },
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer",
                           "description": "`Authorization: Bearer <key>`, a key made by `flask client add`."},
            "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-Api-Key",
                           "description": "The same key in `X-Api-Key`."},
        },
    }


def _header(description: str, schema: Json, *, required: bool = False) -> Json:
    return {"description": description, "required": required, "schema": schema}
