"""Fake DingTalk token platform, new API (platform-facts §5).

Endpoints:
  POST /v1.0/oauth2/accessToken   JSON body {"appKey", "appSecret"} -> {"accessToken", "expireIn"}.
                                  While the app's token is valid every call returns the SAME
                                  token and extends its life to a full expires_in; a new token
                                  only after expiry (or after invalidate()).
  GET  /v1.0/microApp/allInnerApps  business-API stand-in; the token goes in the
                                  x-acs-dingtalk-access-token header

Errors are non-2xx answers with ``{"code": "<string>", "message", "requestid"}``:
  400 Missingbody              no JSON body (a form body included): "body is mandatory for this action."
  400 MissingappKey / MissingappSecret
  400 invalidClientIdOrSecret  unknown appKey or wrong appSecret (the oauth2 v1.0 error table's code)
  400 InvalidAuthentication    business API with a bad or expired token ("不合法的access_token")
  404 InvalidAction.NotFound   wrong method or path

Run standalone: ``python -m tests.fakes.dingtalk --app dingkey:secret[:7200]``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import uuid
from dataclasses import dataclass
from typing import Any

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = ["App", "FakeDingTalk", "Token", "main"]

TOKEN_PATH = "/v1.0/oauth2/accessToken"
API_PATH = "/v1.0/microApp/allInnerApps"
TOKEN_HEADER = "x-acs-dingtalk-access-token"


@dataclass
class App:
    app_key: str
    secret: str
    expires_in: int = 7200


@dataclass
class Token:
    value: str
    app_key: str
    issued_at: float
    expires_at: float  # moved forward by every accessToken call while valid
    invalidated: bool = False


class FakeDingTalk(FakePlatform):
    """In-memory DingTalk accessToken endpoint."""

    appid_keys = ("appKey",)
    errcode_key = "code"
    errmsg_key = "message"

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.apps: dict[str, App] = {}
        self._tokens: dict[str, Token] = {}
        self._current: dict[str, Token] = {}

    # ------------------------------------------------------------------ setup

    def add_app(self, app_key: str, secret: str, *, expires_in: int = 7200) -> App:
        app = App(app_key, secret, expires_in)
        with self.lock:
            self.apps[app_key] = app
        return app

    # ---------------------------------------------------------- test helpers

    def is_valid(self, token: str, at: float | None = None) -> bool:
        with self.lock:
            info = self._tokens.get(token)
            if info is None or info.invalidated:
                return False
            return (self.now() if at is None else at) < info.expires_at

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def issued(self, app_key: str | None = None) -> list[str]:
        with self.lock:
            return [t.value for t in self._tokens.values() if app_key is None or t.app_key == app_key]

    def invalidate(self, token: str) -> None:
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.invalidated = True

    def error_body(self, errcode: int | str, errmsg: str) -> dict[str, Any]:
        return {"code": str(errcode), "message": errmsg, "requestid": _requestid()}

    def fail_with_code_next(self, n: int, code: str, message: str = "", *, status: int = 400,
                            path: str | None = None) -> None:
        """Answer the next ``n`` calls the way DingTalk reports errors: HTTP
        ``status`` with a ``{"code", "message", "requestid"}`` body."""
        self.fail_next(n, status, self.error_body(code, message or code), path=path)

    # --------------------------------------------------------------- internals

    @staticmethod
    def _err(status: int, code: str, message: str) -> Reply:
        return status, {"code": code, "requestid": _requestid(), "message": message}

    def call_fields(self, request: Request) -> dict[str, Any]:
        if request.path == API_PATH:
            token = request.headers.get(TOKEN_HEADER) or None
            info = self._tokens.get(token or "")
            return {"appid": info.app_key if info else None, "token": token}
        return {"appid": self.extract_appid(request), "content_type": request.content_type or None}

    # ---------------------------------------------------------------- handlers

    @route("POST", TOKEN_PATH)
    def _access_token(self, req: Request) -> Reply:
        body = req.json() if req.content_type == "application/json" else None
        if not isinstance(body, dict):
            req.note(code="Missingbody")
            return self._err(400, "Missingbody", "body is mandatory for this action.")
        app_key, app_secret = body.get("appKey"), body.get("appSecret")
        for name, value in (("appKey", app_key), ("appSecret", app_secret)):
            if not isinstance(value, str) or not value:
                req.note(code=f"Missing{name}")
                return self._err(400, f"Missing{name}", f"{name} is mandatory for this action.")
        app = self.apps.get(str(app_key))
        if app is None or app.secret != app_secret:
            req.note(code="invalidClientIdOrSecret")
            return self._err(400, "invalidClientIdOrSecret", "无效的clientId或者clientSecret")
        now = self.now()
        current = self._current.get(app.app_key)
        if current is None or current.invalidated or current.expires_at <= now:
            while True:
                value = secrets.token_hex(16)  # real tokens are 32 hex characters
                if value not in self._tokens:
                    break
            current = Token(value, app.app_key, now, now + app.expires_in)
            self._tokens[value] = current
            self._current[app.app_key] = current
        else:
            # Same token, life extended: "repeated calls within validity
            # return the same token and extend its validity".
            current.expires_at = now + app.expires_in
        req.note(token=current.value)
        return 200, {"accessToken": current.value, "expireIn": app.expires_in}

    @route("GET", TOKEN_PATH)
    def _access_token_get(self, req: Request) -> Reply:
        return self._err(404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method.")

    @route("GET", API_PATH)
    def _all_inner_apps(self, req: Request) -> Reply:
        token = req.headers.get(TOKEN_HEADER, "")
        if not self.is_valid(token):
            return self._err(400, "InvalidAuthentication", "不合法的access_token")
        return 200, {"appList": []}


def _requestid() -> str:
    return str(uuid.uuid4()).upper()


# ------------------------------------------------------------------ standalone


def _parse_app(spec: str) -> tuple[str, str, int]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected APPKEY:SECRET[:EXPIRES_IN], got {spec!r}")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else 7200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake DingTalk token platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app", type=_parse_app, action="append", default=[], metavar="APPKEY:SECRET[:EXPIRES_IN]")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every call")
    args = parser.parse_args(argv)

    fake = FakeDingTalk(port=args.port)
    for app_key, secret, expires_in in args.app:
        fake.add_app(app_key, secret, expires_in=expires_in)
    fake.delay(args.delay)

    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
