"""``GET /openapi.json``: an OpenAPI 3.1 document of the HTTP API.

Built for the app that serves it, at request time: one token path per
registered platform (each with that platform's appid form), security only
where the app asks for a key, and only the routes the app really serves.

Written for code generators as much as for readers: every answer has one
plain object schema of its own (no ``allOf``, which generators such as
openapi-python-client cannot merge with a ``const``), and every status a
route can answer is declared with it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from ..core.callbacks import CallbackProvider
from ..core.domain import APPID_PATTERN

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
APPID_MAX_LENGTH = 128
REQUEST_ID_REGEX = "^[A-Za-z0-9._:-]{1,64}$"
DEFAULT_TICKET_TYPES = ("jsapi", "wx_card")
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
EXAMPLE_TOKEN = "83_Xk2example"
TOKEN_ROUTE = "/token/{platform}/{appid}"
TICKET_ROUTE = "/ticket/{platform}/{appid}/{ticket_type}"
CALLBACK_ROUTE = "/callback/{platform}/{appid}"
AUTHORIZE_ROUTE = "/authorize/{platform}/{appid}"
PROXY_ROUTE = "/proxy/{platform}/{appid}/{path}"
PROXY_METHODS = ("get", "post", "put", "patch", "delete")
# Segments of RFC 3986 unreserved characters, none starting with a dot
# (so no "." or ".." segment): what the proxy sends on unchanged.
PROXY_PATH_PATTERN = r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]*(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*$"
EXPIRES_IN_TEXT = "Whole seconds the hub will keep serving this value."

Json = dict[str, Any]
Route = tuple[str, str]


@dataclass(frozen=True)
class AppidForm:
    """What a platform's appids look like: a regular expression matching
    one whole, and an example of one (or None)."""

    pattern: str = APPID_PATTERN.pattern
    example: str | None = None


_STATUS_TEXT = {
    400: "Bad request: a malformed appid (`[A-Za-z0-9_.:-]{1,128}` plus the platform's own form), a body "
         "that is not a JSON object, or a `stale_token` that is not a non-empty string (or named twice with "
         "different values).",
    401: "No API key, or an unknown or revoked one.",
    403: "The key's scope does not cover this app; or, with `auth_required` off, a caller that is not on this "
         "machine.",
    404: "No credential for the appid, an unknown platform (the message lists the supported ones), ticket type "
         "or path.",
    405: "Method not allowed on this path; `Allow` lists the methods that are.",
    413: "Request body over 64 KiB.",
    429: "Too many refreshes that reach the platform for this client and app, or WeChat's `force_refresh` "
         "limits.",
    500: "Anything unexpected (logged; no trace is sent).",
    502: "The platform refused: its errcode and message (never the secret). During a cooldown after a failed "
         "call, with `Retry-After`.",
    503: "A store is unavailable, another worker's refresh took too long (then with `Retry-After`), or a "
         "third-party app's pushed ticket is awaited.",
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
    appid_forms: dict[str, AppidForm] = {}
    third_party: list[str] = []
    proxied: list[str] = []
    for name in service.platforms():
        provider = service.providers.get(name)
        if isinstance(provider, CallbackProvider):
            third_party.append(name)
        if getattr(provider, "token_placement", None) is not None:
            proxied.append(name)
        types = tuple(getattr(provider, "ticket_types", ()) or ())
        if types:
            ticket_types[name] = types
        appid_forms[name] = AppidForm(getattr(provider, "appid_pattern", APPID_PATTERN.pattern),
                                      getattr(provider, "appid_example", None))
    return build_document(
        platforms=service.platforms(),
        ticket_types=ticket_types,
        appid_forms=appid_forms,
        third_party=third_party,
        proxied=proxied,
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
                   auth_required: bool, appid_forms: Mapping[str, AppidForm] | None = None,
                   third_party: Sequence[str] = (), routes: Collection[Route] | None = None,
                   proxied: Sequence[str] = ()) -> Json:
    """The document for an app with these platforms (and, per platform, its
    ticket types and appid form; ``third_party`` the ones that take pushed
    callbacks and authorizations; ``proxied`` the ones whose API calls the
    proxy takes) that does or does not ask for a key. With
    ``routes``, only the operations of those routes are listed; without,
    every operation the service defines.

    The token and ticket routes take the platform as a path segment; the
    document lists one path per platform instead of a ``{platform}``
    parameter, because what a valid appid is depends on the platform and a
    parameter's schema cannot depend on another parameter."""
    secured: list[Json] = [{"bearerAuth": []}, {"apiKeyAuth": []}] if auth_required else []
    forms = {name: (appid_forms or {}).get(name, AppidForm()) for name in platforms}
    paths: Json = {}
    apps = [name for name in third_party if name in forms]
    operations = [*_operations(forms, ticket_types, apps, auth_required, secured),
                  *_proxy_operations(forms, [name for name in proxied if name in forms], auth_required, secured)]
    for route, path, method, operation in operations:
        if routes is None or (route, method) in routes:
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
            {"name": "third-party", "description": "What third-party platforms push (tickets, authorizations), "
                                                   "and the pages accounts authorize a third-party app on."},
            {"name": "proxy", "description": "Platform API calls sent on with the hub's token: the token never "
                                             "leaves the hub."},
            {"name": "operations", "description": "Health, readiness, metrics and the status page."},
            {"name": "meta", "description": "This document."},
        ],
        "paths": paths,
        "components": _components(),
    }


def _description(auth_required: bool) -> str:
    auth = ("This server requires an API key on the token, ticket, authorization and status-page routes: send "
            "`Authorization: Bearer <key>` or `X-Api-Key: <key>`, and `/metrics` one with the `metrics` scope. "
            "`/healthz`, `/readyz` and `/openapi.json` need none, nor do third-party platforms' `/callback/...` "
            "routes (the platform's signature authenticates them)."
            if auth_required else
            "This server runs with `auth_required` off: no route needs a key. With it on, the token, ticket, "
            "authorization and status-page routes take `Authorization: Bearer <key>` or `X-Api-Key: <key>`, "
            "and `/metrics` a key with the `metrics` scope.")
    return (
        "Every JSON answer, errors included, is the envelope "
        '`{"code": <HTTP status>, "data": <token or null>, "error": "<message>"}`. '
        "Every answer carries `X-Request-Id`: the caller's own when it matches `[A-Za-z0-9._:-]{1,64}`, "
        "else a new one. A method a path does not allow is answered 405 with `Allow`; an unknown path 404; "
        "a body over 64 KiB 413 (on `/proxy/...`, over `proxy_max_body`). The `/proxy/...` routes answer "
        "with the platform's own answer, whatever it is, and with the envelope only for the hub's own "
        "refusals.\n\n" + auth
    )


def _version() -> str:
    try:
        return metadata.version("pighand-token")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


# -- operations ------------------------------------------------------------------
def _operations(forms: Mapping[str, AppidForm], ticket_types: Mapping[str, Sequence[str]],
                third_party: Sequence[str], auth_required: bool,
                secured: list[Json]) -> Iterable[tuple[str, str, str, Json]]:
    """``(route, path, method, operation)``: ``route`` is the Flask route
    (in OpenAPI form) the operation is served by."""
    unauthorized = [401] if auth_required else []
    # 403 on the token routes: with keys, a scope that does not cover the
    # app; without, a caller that is not on this machine (on every route).
    request_id = {"$ref": "#/components/parameters/RequestId"}
    for platform, form in sorted(forms.items()):
        name = _camel(platform)
        appid = _param("appid", "path", f"The app's id on {platform}.", _appid_schema(form), example=form.example)
        yield TOKEN_ROUTE, f"/token/{platform}/{{appid}}", "get", {
            "tags": ["tokens"],
            "operationId": f"get{name}Token",
            "summary": f"The current {platform} token",
            "description": "Served from Redis, the worker's memory or the SQL store, and fetched from the "
                           "platform only when none holds a valid one (one call across every worker and "
                           "instance).",
            "parameters": [appid, request_id],
            "security": secured,
            "responses": _responses(_ok("The current token.", "Token"),
                                    [400, *unauthorized, 403, 404, 405, 500, 502, 503, 504]),
        }
        yield TOKEN_ROUTE, f"/token/{platform}/{{appid}}", "put", {
            "tags": ["tokens"],
            "operationId": f"refresh{name}Token",
            "summary": f"Replace the {platform} token",
            "description": "Without a stale token: a new token from the platform, stored in every tier. With "
                           "`stale_token` (the token a platform API rejected): the current token if it is "
                           "already a different one (no platform call), else a new one. Name it in the body "
                           "or in the query, not in both with different values.",
            "parameters": [
                appid,
                _param("stale_token", "query", "The token a platform API rejected.",
                       {"type": "string", "minLength": 1}),
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
                                    [400, *unauthorized, 403, 404, 405, 413, 429, 500, 502, 503, 504]),
        }
    for platform, types in sorted(ticket_types.items()):
        if platform not in forms or not types:
            continue
        form = forms[platform]
        kinds = sorted(types)
        yield TICKET_ROUTE, f"/ticket/{platform}/{{appid}}/{{ticket_type}}", "get", {
            "tags": ["tokens"],
            "operationId": f"get{_camel(platform)}Ticket",
            "summary": f"A {platform} ticket made with the managed token",
            "description": "The WeChat JS-SDK `jsapi_ticket` or card `api_ticket`, cached with its own expiry "
                           "like a token. If the platform rejects the token, it is replaced once and the "
                           "ticket asked for again.",
            "parameters": [
                _param("appid", "path", f"The app's id on {platform}.", _appid_schema(form), example=form.example),
                _param("ticket_type", "path", "`jsapi`: the JS-SDK `jsapi_ticket`; `wx_card`: the card "
                       "`api_ticket`.", {"type": "string", "enum": kinds}, example=kinds[0]),
                request_id,
            ],
            "security": secured,
            "responses": _responses(_ok("The current ticket.", "Token"),
                                    [400, *unauthorized, 403, 404, 405, 429, 500, 502, 503, 504]),
        }
    yield from _third_party_operations(forms, third_party, auth_required, secured)
    open_errors = [*([] if auth_required else [403]), 405, 500]
    # With keys, a key is looked up in the SQL store: 503 while it is down.
    keys_looked_up = [503] if auth_required else []
    yield "/healthz", "/healthz", "get", {
        "tags": ["operations"],
        "operationId": "healthz",
        "summary": "Liveness",
        "description": "The process answers; touches no store.",
        "parameters": [request_id],
        "security": [],
        "responses": _responses(_ok("Alive.", "Ok"), open_errors),
    }
    yield "/readyz", "/readyz", "get", {
        "tags": ["operations"],
        "operationId": "readyz",
        "summary": "Readiness",
        "description": "Every configured store (SQL, Redis) answers. 503 names the ones that do not.",
        "parameters": [request_id],
        "security": [],
        "responses": _responses(_ok("Every store answers.", "Ok"), open_errors, {
            "503": {
                "description": "Not ready: the error names each store that failed.",
                "headers": _headers(),
                "content": _json({"$ref": "#/components/schemas/Unavailable"}),
            },
        }),
    }
    yield "/metrics", "/metrics", "get", {
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
        }, [*unauthorized, 403, 405, 500, *keys_looked_up]),
    }
    page_errors: Json = {"500": _html("Anything unexpected, as a page (logged; no trace is sent)."),
                         "503": _html("A store is unavailable, as a page naming it.")}
    if auth_required:
        page_errors["401"] = _html("No API key, or an unknown or revoked one, as a page saying how to send one.",
                                   {"WWW-Authenticate": "WWWAuthenticate"})
    else:
        page_errors["403"] = _html("A caller that is not on this machine, as a page.")
    yield "/", "/", "get", {
        "tags": ["operations"],
        "operationId": "statusPage",
        "summary": "Status page",
        "description": "One HTML page: each credential's platform and appid, token state, expiry, last "
                       "refresh and last platform error; no token or secret. Errors are pages too, but for "
                       "a method the page does not allow (405, the envelope)."
                       + (" Needs a key; the page lists only the apps in the key's scope." if auth_required
                          else ""),
        "parameters": [request_id],
        "security": secured,
        "responses": _responses(_html("The status page."), [405], page_errors),
    }
    yield "/openapi.json", "/openapi.json", "get", {
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
        }, open_errors),
    }


# What an authorization page takes besides redirect_uri, per platform: passed
# on to the platform's page as they are.
_AUTHORIZE_OPTIONS: dict[str, tuple[tuple[str, str, Json], ...]] = {
    "wechat_component": (
        ("auth_type", "Which accounts may authorize: 1 official accounts, 2 mini programs, 3 both "
                      "(WeChat's own default when left out).", {"type": "string", "enum": ["1", "2", "3"]}),
        ("biz_appid", "The one account that may authorize.", {"type": "string", "minLength": 1}),
    ),
    "wecom_suite": (
        ("state", "Handed back to redirect_uri as it is.", {"type": "string"}),
    ),
}


@dataclass(frozen=True)
class _CallbackFormat:
    """How a third-party platform's pushes and our answers look, for the document."""

    signature: tuple[tuple[str, str], ...] = (("msg_signature", "The platform's signature of the message."),
                                              ("timestamp", "Signed with it."), ("nonce", "Signed with it."))
    # Where the signature's parameters come: the query string, or headers.
    signed_in: str = "query"
    summary: str = "what the platform pushes"
    body: str = ("The platform's XML envelope (`<xml><Encrypt>...`), as it sends it (text/xml); the body is read "
                 "whatever its Content-Type.")
    # Read as raw bytes whatever the Content-Type (the platforms send text/xml); declared as
    # octet-stream because client generators (openapi-python-client) cannot type an XML body.
    body_content: Json = field(default_factory=lambda: {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
    message: str = ("The platform's encrypted XML message: a ticket (stored; an older one never replaces a newer), "
                    "an authorization (its code exchanged at once, the grant and the account's token stored), a "
                    "change, or a removal (the account and its tokens forgotten). Redeliveries are idempotent; "
                    "unknown events are acknowledged. XML entities are not expanded: malformed XML is 400. No key: "
                    "the signature authenticates.")
    reply: Json = field(default_factory=lambda: {
        "description": "`success` (or, for a URL check, the decrypted `echostr`), sent once what the message "
                       "carries is stored.",
        "content": {"text/plain": {"schema": {"type": "string"}}}})


# Feishu / Lark push JSON events signed in headers, not XML signed in the query string.
_FEISHU_EVENTS = _CallbackFormat(
    signature=(("X-Lark-Request-Timestamp", "When the platform signed the push (seconds); one more than 5 minutes "
                                            "off is refused as a replay."),
               ("X-Lark-Request-Nonce", "Signed with it."),
               ("X-Lark-Signature", "sha256(timestamp + nonce + Encrypt Key + body), hex; sent when the app has an "
                                    "Encrypt Key.")),
    signed_in="header",
    summary="the events the platform pushes",
    body="The event as the platform sends it.",
    body_content={"application/json": {"schema": {"type": "object"}}},
    message="The app's event subscription: `{\"encrypt\": ...}` (AES-256-CBC with sha256 of the Encrypt Key, "
            "signed in the headers) or, for an app without an Encrypt Key, the plain event; the verification token "
            "inside must match. `url_verification` is answered with its `challenge`; `app_ticket` is stored (an "
            "older one never replaces a newer); any event naming a `tenant_key` records the tenant; "
            "`app_uninstalled` forgets it. Redeliveries are idempotent; unknown events are acknowledged. No key: "
            "the signature and the token authenticate.",
    reply={"description": "`{\"challenge\": ...}` for a URL check, else `{\"msg\": \"success\"}`, sent once what "
                          "the event carries is stored.",
           # The platform's own answer, not the envelope: Feishu reads the challenge from it.
           "content": {"application/json": {"schema": {
               "type": "object", "additionalProperties": False,
               "properties": {"challenge": {"type": "string"}, "msg": {"const": "success"}}}}}})

_CALLBACK_FORMATS: dict[str, _CallbackFormat] = {
    "dingtalk_suite": _CallbackFormat(
        signature=(("signature", "The platform's signature of the message (DingTalk's name for it)."),
                   ("msg_signature", "The same signature under the name DingTalk's newer pushes use; one of "
                                     "the two is required."),
                   ("timestamp", "Signed with it (milliseconds)."), ("nonce", "Signed with it.")),
        body="DingTalk's JSON `{\"encrypt\": \"...\"}`; the body is read whatever its Content-Type.",
        message="DingTalk's encrypted JSON event: a URL check (`check_url`, `check_create_suite_url`, "
                "`check_update_suite_url`), a `suite_ticket` (stored; an older one never replaces a newer), a "
                "corp's authorization (`tmp_auth_code`, `change_auth`: the corp recorded), its removal "
                "(`suite_relieve`: the corp and its tokens forgotten), or a sync HTTP push "
                "(`SYNC_HTTP_PUSH_HIGH`: the same events as rows). Redeliveries are idempotent; unknown events are "
                "acknowledged. No key: the signature authenticates.",
        reply={"description": "The encrypted JSON of `success` that DingTalk waits for, URL checks included, sent "
                              "once what the message carries is stored.",
               "content": {"application/json": {"schema": {
                   "type": "object", "required": ["msg_signature", "timeStamp", "nonce", "encrypt"],
                   "properties": {name: {"type": "string"} for name in (
                       "msg_signature", "timeStamp", "nonce", "encrypt")}}}}}),
    "feishu_store": _FEISHU_EVENTS,
    "lark_store": _FEISHU_EVENTS,
}


def _third_party_operations(forms: Mapping[str, AppidForm], third_party: Sequence[str], auth_required: bool,
                            secured: list[Json]) -> Iterable[tuple[str, str, str, Json]]:
    """The callback a third-party platform pushes to (no key: the platform
    signs instead) and the authorization helpers (behind a key)."""
    unauthorized = [401] if auth_required else []
    local_only = [] if auth_required else [403]
    request_id = {"$ref": "#/components/parameters/RequestId"}
    signed: Json = {"401": {
        "description": "The signature does not match (wrong callback token, or the message was altered), or "
                       "the body does not decrypt with the EncodingAESKey; nothing is stored.",
        "headers": _headers(),
        "content": _json({"$ref": "#/components/schemas/Unauthorized"}),
    }}
    for platform in sorted(third_party):
        form, name = forms[platform], _camel(platform)
        shape = _CALLBACK_FORMATS.get(platform, _CallbackFormat())
        replied: Json = {**shape.reply, "headers": _headers()}
        appid = _param("appid", "path", f"The app's id on {platform} (as `platform add` stored it).",
                       _appid_schema(form), example=form.example)
        callback = f"/callback/{platform}/{{appid}}"
        signature = [_param(name_, shape.signed_in, text, {"type": "string"}) for name_, text in shape.signature]
        # Exchanging a pushed authorization code is a platform call: 502/504.
        pushed = [400, *local_only, 404, 405, 500, 502, 503, 504]
        yield CALLBACK_ROUTE, callback, "get", {
            "tags": ["third-party"],
            "operationId": f"check{name}CallbackUrl",
            "summary": f"{platform}: the callback URL check",
            "description": "For platforms that check the URL with a GET (WeCom: the signed, encrypted `echostr`, "
                           "answered decrypted). A platform that only posts answers 405 with `Allow: POST`. "
                           "No key: the signature authenticates.",
            "parameters": [appid, *(signature if shape.signed_in == "query" else []),
                           _param("echostr", "query", "The encrypted string to answer decrypted.",
                                  {"type": "string"}), request_id],
            "security": [],
            "responses": _responses(replied, [400, *local_only, 404, 405, 500, 503], signed),
        }
        yield CALLBACK_ROUTE, callback, "post", {
            "tags": ["third-party"],
            "operationId": f"push{name}Callback",
            "summary": f"{platform}: {shape.summary}",
            "description": shape.message,
            "parameters": [appid, *signature, request_id],
            "requestBody": {"required": True, "description": shape.body, "content": shape.body_content},
            "security": [],
            "responses": _responses(replied, sorted([*pushed, 413]), signed),
        }
        authorize = f"/authorize/{platform}/{{appid}}"
        options = [_param(option, "query", text, schema) for option, text, schema in _AUTHORIZE_OPTIONS.get(
            platform, ())]
        yield AUTHORIZE_ROUTE, authorize, "get", {
            "tags": ["third-party"],
            "operationId": f"get{name}AuthorizationUrl",
            "summary": f"{platform}: the page an account authorizes the app on",
            "description": "A fresh pre-auth code from the platform, in the URL of its authorization page; the "
                           "page sends the account back to `redirect_uri` with `auth_code`. The key's scope "
                           f"must cover the app (`{platform}:<appid>`).",
            "parameters": [
                appid,
                _param("redirect_uri", "query", "The http(s) page the platform sends the account back to.",
                       {"type": "string", "pattern": "^https?://"}, example="https://example.com/authorized",
                       required=True),
                *options, request_id],
            "security": secured,
            "responses": _responses(_ok("The authorization page's URL.", "AuthorizationUrl"),
                                    [400, *unauthorized, 403, 404, 405, 500, 502, 503, 504]),
        }
        yield AUTHORIZE_ROUTE, authorize, "post", {
            "tags": ["third-party"],
            "operationId": f"authorize{name}Account",
            "summary": f"{platform}: exchange the code an authorization page redirected with",
            "description": "For when the platform's push is late or lost: the code is exchanged now and the "
                           "account's grant and token stored, as a pushed authorization would be. The key's "
                           f"scope must cover the app (`{platform}:<appid>`).",
            "parameters": [appid, request_id],
            "requestBody": {"required": True, "description": "The `auth_code` the page redirected with.",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/AuthCode"},
                                "example": {"auth_code": "queryauthcode@@@example"}}}},
            "security": secured,
            "responses": _responses(_ok("The account that authorized.", "AuthorizedAccount"),
                                    [400, *unauthorized, 403, 404, 405, 413, 500, 502, 503, 504]),
        }


def _proxy_operations(forms: Mapping[str, AppidForm], proxied: Sequence[str], auth_required: bool,
                      secured: list[Json]) -> Iterable[tuple[str, str, str, Json]]:
    """``/proxy/<platform>/<appid>/<path>``, one path per platform (the
    appid's form is the platform's) and one operation per method. The
    answer is the platform's, whatever its status and type, so every
    response is declared as any content; the hub's own refusals are its
    JSON envelope."""
    request_id = {"$ref": "#/components/parameters/RequestId"}
    anything: Json = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                      "*/*": {"schema": {}}}
    answered = {"description": "The platform's answer: its status, headers (hop-by-hop ones removed) and body, "
                               "streamed as it sent them.", "headers": _headers(), "content": anything}
    refused = {"description": "Any other status: the platform's own answer as it sent it, or the hub's JSON "
                              "envelope: 400 a path that could leave the platform's base, or a platform without "
                              "an app token (Alipay); 403 a scope that does not cover the app; 404 no credential "
                              "for the appid; 413 a body over `proxy_max_body`; 429 over `proxy_rate_limit`; "
                              "502 the platform unreachable; 503 a store unavailable; 504 no answer within "
                              "`proxy_timeout`.", "headers": _headers(), "content": anything}
    extra: Json = {"default": refused}
    if auth_required:
        extra["401"] = {"description": "No API key, or an unknown or revoked one (the hub's envelope); or the "
                                       "platform's own 401.",
                        "headers": _headers(), "content": anything}
    for platform in sorted(proxied):
        form, name = forms[platform], _camel(platform)
        appid = _param("appid", "path", f"The app's id on {platform}.", _appid_schema(form), example=form.example)
        for method in PROXY_METHODS:
            example = "cgi-bin/get_api_domain_ip" if method == "get" else "cgi-bin/message/custom/send"
            path = _param("path", "path", "The platform API's path under its configured base (e.g. "
                                          "`cgi-bin/message/custom/send`), slashes as they are. The query string "
                                          "is sent on too, less any parameter of the token's name.",
                          {"type": "string", "pattern": PROXY_PATH_PATTERN, "maxLength": 1024}, example=example)
            operation: Json = {
                "tags": ["proxy"],
                "operationId": f"proxy{name}{method.capitalize()}",
                "summary": f"{method.upper()} a {platform} API call with the hub's token",
                "description": "Sent to the platform's configured API base + `path` with the query string, the "
                               "body and the caller's headers (never its API key, `Authorization`, cookies or "
                               "hop-by-hop headers), the current token added the platform's way. On the "
                               "platform's invalid-token answer the token is replaced (one platform call however "
                               "many callers saw it) and the call sent once more if its body is at most 1 MiB. "
                               f"The key's scope must cover the app (`{platform}:<appid>`).",
                "parameters": [appid, path, request_id],
                "security": secured,
                "responses": dict(sorted({"200": answered, **extra}.items())),
            }
            if method in ("post", "put", "patch"):
                operation["requestBody"] = {
                    "required": False,
                    "description": "Sent on as it comes (streamed), up to `proxy_max_body` bytes.",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
            yield PROXY_ROUTE, f"/proxy/{platform}/{{appid}}/{{path}}", method, operation


def _camel(platform: str) -> str:
    """``feishu_app`` -> ``FeishuApp``, for operation ids."""
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", platform) if part)


def _appid_schema(form: AppidForm) -> Json:
    return {"type": "string", "pattern": f"^(?:{form.pattern})$", "maxLength": APPID_MAX_LENGTH}


def _param(name: str, where: str, description: str, schema: Json, *, deprecated: bool = False,
           example: str | None = None, required: bool = False) -> Json:
    param: Json = {"name": name, "in": where, "required": required or where == "path", "description": description,
                   "schema": schema}
    if deprecated:
        param["deprecated"] = True
    if example is not None:
        param["example"] = example
    return param


def _ok(description: str, schema: str) -> Json:
    headers = _headers({"Cache-Control": "CacheControl"} if schema == "Token" else None)
    return {"description": description, "headers": headers,
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


def _envelope_schema(description: str, *, code: Json, data: Json, error: Json,
                     extra: Mapping[str, Json] | None = None, required_extra: Sequence[str] = ()) -> Json:
    """One answer's envelope as a plain object schema: generators type each
    field from it directly."""
    return {
        "type": "object",
        "description": description,
        "required": ["code", "data", "error", *required_extra],
        "properties": {"code": code, "data": data, "error": error, **(extra or {})},
        "additionalProperties": False,
    }


def _error_schema(status: int) -> Json:
    return _envelope_schema(
        f"The envelope of a {status} answer: `data` is null, `error` says what went wrong.",
        code={"type": "integer", "const": status, "description": "The HTTP status."},
        data={"type": "null"},
        error={"type": "string", "minLength": 1, "description": "What went wrong; never a secret."},
    )


# -- components --------------------------------------------------------------------
def _components() -> Json:
    responses: Json = {}
    for status, name in _NAMES.items():
        headers = {
            401: _headers({"WWW-Authenticate": "WWWAuthenticate"}),
            405: _headers({"Allow": "Allow"}),
            429: _headers({"Retry-After": "RetryAfterRequired"}),
            502: _headers({"Retry-After": "RetryAfter"}),
            503: _headers({"Retry-After": "RetryAfter"}),
        }.get(status, _headers())
        responses[name] = {"description": _STATUS_TEXT[status], "headers": headers,
                           "content": _json({"$ref": f"#/components/schemas/{name}"})}
    ok_code = {"type": "integer", "const": 200, "description": "The HTTP status."}
    no_error = {"type": "string", "const": "", "description": "Empty on success."}
    return {
        "schemas": {
            "Token": _envelope_schema(
                "A token (or ticket) answer: `data` is the token.",
                code=ok_code,
                data={"type": "string", "minLength": 1, "description": "The token or ticket."},
                error=no_error,
                extra={"expires_in": {"type": "integer", "minimum": 0, "description": EXPIRES_IN_TEXT}},
                required_extra=("expires_in",),
            ),
            "AuthorizationUrl": _envelope_schema(
                "The authorization page: `data` is its URL, with a fresh pre-auth code.",
                code=ok_code, data={"type": "string", "minLength": 1, "format": "uri"}, error=no_error,
            ),
            "AuthorizedAccount": _envelope_schema(
                "`data` is the id of the account that authorized (its tokens are at "
                "`<app id>:<account id>` on the account platform).",
                code=ok_code, data={"type": "string", "minLength": 1}, error=no_error,
            ),
            "AuthCode": {
                "type": "object",
                "description": "A code an authorization page redirected with.",
                "required": ["auth_code"],
                "properties": {"auth_code": {"type": "string", "minLength": 1}},
            },
            "Ok": _envelope_schema(
                "A successful answer of `/healthz` (`ok`) or `/readyz` (`ready`).",
                code=ok_code, data={"type": "string", "minLength": 1}, error=no_error,
            ),
            **{name: _error_schema(status) for status, name in _NAMES.items()},
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
            "Allow": _header("The methods the path allows.", {"type": "string"}, required=True),
            "CacheControl": _header("`private, max-age=<expires_in>`: how long a cache may keep the answer.",
                                    {"type": "string"}),
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
