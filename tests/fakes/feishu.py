"""Fake Feishu / Lark open platform for custom apps (platform-facts §2).

Endpoints:
  POST /open-apis/auth/v3/tenant_access_token/internal   tenant_access_token
  POST /open-apis/auth/v3/app_access_token/internal      app_access_token (+ tenant_access_token)
  GET  /open-apis/contact/v3/users                       business-API stand-in that checks
                                                         ``Authorization: Bearer <tenant token>``

Token rule: while ``rotate_before_s`` (30 minutes) or more remain, a call
returns the current token; in its last 30 minutes a call issues a new one and
the old one stays valid until its own expiry. ``expire`` is the remaining
life of the token returned. Success and errors carry ``code``/``msg``;
``error_status = 400`` answers errors with HTTP 400, as some clients see.
Lark serves the same paths on another host: one more instance of this class.

Run standalone: ``python -m tests.fakes.feishu --port 8080 --app cli_a1b2c3d4e5f6a7b8:secret[:7200]``.
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = ["APP", "APP_PATH", "App", "FakeFeishu", "TENANT", "TENANT_PATH", "Token", "USERS_PATH", "main"]

TENANT_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
APP_PATH = "/open-apis/auth/v3/app_access_token/internal"
USERS_PATH = "/open-apis/contact/v3/users"

TENANT = "tenant"
APP = "app"

# What the fake takes for a well-formed custom app id; anything else is
# "malformed" and answered with 10003 (platform-facts §2.1).
APP_ID = re.compile(r"cli_[0-9a-z]+")

INVALID_TENANT_TOKEN = 99991663
RATE_LIMIT = 99991400


@dataclass
class App:
    app_id: str
    secret: str
    expires_in: int = 7200  # lifetime of newly issued tokens


@dataclass
class Token:
    value: str
    app_id: str
    kind: str  # TENANT or APP
    issued_at: float
    expires_at: float
    revoked: bool = False  # set by invalidate(): business APIs answer 99991663


class FakeFeishu(FakePlatform):
    """In-memory Feishu/Lark token platform, faithful to the documented token rule."""

    appid_keys = ("app_id",)
    errcode_key = "code"
    errmsg_key = "msg"

    def __init__(self, *, port: int = 0, error_status: int = 200) -> None:
        super().__init__(port=port)
        self.apps: dict[str, App] = {}
        self.rotate_before_s: float = 1800  # a new token only when less than this remains
        self.error_status = error_status  # HTTP status of error answers: 200 (live probes) or 400
        self._tokens: dict[str, Token] = {}
        self._current: dict[tuple[str, str], Token] = {}  # (app_id, kind) -> token handed out
        self._rate_limited = 0
        self._rate_limit_reset_s = 0

    # ------------------------------------------------------------------ setup

    def add_app(self, app_id: str, secret: str, *, expires_in: int = 7200) -> App:
        app = App(app_id, secret, expires_in)
        with self.lock:
            self.apps[app_id] = app
        return app

    def rate_limit_next(self, n: int = 1, *, reset_s: int = 30) -> None:
        """Answer the next `n` token calls with 99991400 as HTTP 429 and an
        x-ogw-ratelimit-reset header, like the frequency limit."""
        with self.lock:
            self._rate_limited = n
            self._rate_limit_reset_s = reset_s

    # ---------------------------------------------------------- test helpers

    def token_status(self, token: str, kind: str = TENANT) -> int:
        """The code a business API taking a `kind` token gives `token` now: 0
        or 99991663 (tenant) / 99991664 (app)."""
        invalid = INVALID_TENANT_TOKEN if kind == TENANT else 99991664
        with self.lock:
            info = self._tokens.get(token)
            if info is None or info.kind != kind or info.revoked or self.now() >= info.expires_at:
                return invalid
            return 0

    def is_valid(self, token: str, kind: str | None = None) -> bool:
        with self.lock:
            info = self._tokens.get(token)
            if info is None:
                return False
            return self.token_status(token, kind or info.kind) == 0

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def issued(self, app_id: str | None = None, kind: str | None = None) -> list[str]:
        """All tokens issued so far, oldest first."""
        with self.lock:
            return [t.value for t in self._tokens.values()
                    if (app_id is None or t.app_id == app_id) and (kind is None or t.kind == kind)]

    def invalidate(self, token: str) -> None:
        """Make business APIs reject `token` from now on. The token endpoints
        are not affected: they keep handing it out while 30+ minutes remain."""
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.revoked = True

    # --------------------------------------------------------------- internals

    def _err(self, code: int, msg: str) -> Reply:
        return self.error_status, {"code": code, "msg": msg}

    def _new_value(self) -> str:
        while True:
            value = "t-g1045" + secrets.token_hex(16)
            if value not in self._tokens:
                return value

    def _hand_out(self, app: App, kind: str) -> Token:
        now = self.now()
        current = self._current.get((app.app_id, kind))
        if current is None or current.expires_at - now < self.rotate_before_s:
            # The last 30 minutes: a new token; the old one lives on until its own expiry.
            current = Token(self._new_value(), app.app_id, kind, now, now + app.expires_in)
            self._tokens[current.value] = current
            self._current[(app.app_id, kind)] = current
        return current

    def _remaining(self, token: Token) -> int:
        return max(0, round(token.expires_at - self.now()))

    def _check(self, req: Request) -> App | Reply:
        params = req.json()
        if not isinstance(params, dict):
            return self._err(10003, "invalid param")
        app_id, secret = params.get("app_id"), params.get("app_secret")
        if not isinstance(app_id, str) or not APP_ID.fullmatch(app_id):
            return self._err(10003, "invalid param")  # empty or malformed app_id
        if not isinstance(secret, str) or not secret:
            return self._err(10003, "invalid param")
        app = self.apps.get(app_id)
        if app is None:
            return self._err(10014, "app id not exists")
        if secret != app.secret:
            return self._err(10014, "app secret invalid")
        return app

    def _rate_limit(self) -> Reply | None:
        if self._rate_limited <= 0:
            return None
        self._rate_limited -= 1
        headers = {"x-ogw-ratelimit-limit": "100", "x-ogw-ratelimit-reset": str(self._rate_limit_reset_s)}
        return 429, {"code": RATE_LIMIT, "msg": "request trigger frequency limit"}, headers

    def call_fields(self, request: Request) -> dict[str, Any]:
        if request.path in (TENANT_PATH, APP_PATH):
            body = request.json_object()
            app_id = body.get("app_id")
            return {"kind": TENANT if request.path == TENANT_PATH else APP,
                    "appid": app_id if isinstance(app_id, str) and app_id else None}
        if request.path == USERS_PATH:
            token = _bearer(request)
            info = self._tokens.get(token) if token else None
            return {"kind": "api", "appid": info.app_id if info else None, "token": token}
        return {"appid": self.extract_appid(request)}

    # ---------------------------------------------------------------- handlers

    @route("POST", TENANT_PATH)
    def _tenant_token(self, req: Request) -> Reply:
        limited = self._rate_limit()
        if limited is not None:
            return limited
        app = self._check(req)
        if not isinstance(app, App):
            return app
        token = self._hand_out(app, TENANT)
        req.note(token=token.value)
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token.value, "expire": self._remaining(token)}

    @route("POST", APP_PATH)
    def _app_token(self, req: Request) -> Reply:
        limited = self._rate_limit()
        if limited is not None:
            return limited
        app = self._check(req)
        if not isinstance(app, App):
            return app
        token = self._hand_out(app, APP)
        tenant = self._hand_out(app, TENANT)
        req.note(token=token.value)
        return 200, {"code": 0, "msg": "ok", "app_access_token": token.value,
                     "tenant_access_token": tenant.value, "expire": self._remaining(token)}

    @route("GET", USERS_PATH)
    def _users(self, req: Request) -> Reply:
        token = _bearer(req)
        if not token or self.token_status(token, TENANT):
            return self._err(INVALID_TENANT_TOKEN, "Invalid access token for authorization. "
                                                   "Please make a request with token attached.")
        return 200, {"code": 0, "msg": "success", "data": {"has_more": False, "items": []}}


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# ------------------------------------------------------------------ standalone


def _parse_app(spec: str) -> tuple[str, str, int]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected APP_ID:SECRET[:EXPIRES_IN], got {spec!r}")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 7200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Feishu/Lark token platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app", type=_parse_app, action="append", default=[], metavar="APP_ID:SECRET[:EXPIRES_IN]")
    parser.add_argument("--error-status", type=int, default=200, choices=(200, 400))
    args = parser.parse_args(argv)

    fake = FakeFeishu(port=args.port, error_status=args.error_status)
    for app_id, secret, expires_in in args.app:
        fake.add_app(app_id, secret, expires_in=expires_in)
    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
