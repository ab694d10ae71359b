"""Fake WeCom (企业微信) token platform (platform-facts §4).

Endpoints:
  GET /cgi-bin/gettoken?corpid=&corpsecret=   the app's token: the SAME token while
                                              it is valid, a new one only after expiry
                                              (or after invalidate())
  GET /cgi-bin/get_api_domain_ip              business-API stand-in that checks an
                                              access_token: 41001 / 40014 / 42001

Apps are (corpid, agentid) with their own secret; gettoken knows the app only
by its secret, so the call log's ``appid`` is ``corpid:agentid`` when the
secret matches an app of that corp.

What the repeated gettoken reports as ``expires_in`` is undocumented:
``repeat_expires_in = "remaining"`` (default) reports the token's remaining
life, ``"full"`` reports the full lifetime again without extending it.

Run standalone: ``python -m tests.fakes.wecom --app ww1:1000002:secret[:7200]``.
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = ["App", "FakeWeCom", "Token", "main"]

TOKEN_PATH = "/cgi-bin/gettoken"
API_PATH = "/cgi-bin/get_api_domain_ip"

_ERRMSG: dict[int, str] = {
    -1: "system busy",
    40001: "invalid credential",
    40013: "invalid corpid",
    40014: "invalid access_token",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    42001: "access_token expired",
    60020: "not allow to access from your ip",
}


@dataclass
class App:
    corpid: str
    agentid: str
    secret: str
    expires_in: int = 7200
    untrusted_ip: str | None = None  # when set, gettoken answers 60020 naming this IP

    @property
    def appid(self) -> str:
        return f"{self.corpid}:{self.agentid}"


@dataclass
class Token:
    value: str
    appid: str  # corpid:agentid
    issued_at: float
    expires_at: float
    invalidated: bool = False


class FakeWeCom(FakePlatform):
    """In-memory WeCom gettoken, faithful to the documented errcodes."""

    appid_keys = ("corpid",)

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.apps: dict[tuple[str, str], App] = {}
        self.repeat_expires_in: str = "remaining"
        # A token with less than this left counts as expired for gettoken, so
        # a caller is never handed one it cannot use (and expires_in is never 0).
        self.min_remaining_s: float = 1.0
        self.ip_list: list[str] = ["198.51.100.20", "198.51.100.21"]
        self._tokens: dict[str, Token] = {}
        self._current: dict[str, Token] = {}  # appid -> token gettoken hands out

    # ------------------------------------------------------------------ setup

    def add_app(self, corpid: str, agentid: str | int, secret: str, *, expires_in: int = 7200,
                untrusted_ip: str | None = None) -> App:
        app = App(corpid, str(agentid), secret, expires_in, untrusted_ip)
        with self.lock:
            self.apps[(corpid, app.agentid)] = app
        return app

    def trust_ip(self, corpid: str, agentid: str | int, untrusted_ip: str | None) -> None:
        """Make gettoken refuse (60020, naming ``untrusted_ip``) or accept again."""
        with self.lock:
            self.apps[(corpid, str(agentid))].untrusted_ip = untrusted_ip

    # ---------------------------------------------------------- test helpers

    def token_status(self, token: str, at: float | None = None) -> int:
        """The errcode a business API would give ``token`` (now, or at ``at``
        on this fake's clock): 0, 40014 (unknown or invalidated) or 42001."""
        with self.lock:
            info = self._tokens.get(token)
            if info is None or info.invalidated:
                return 40014
            return 42001 if (self.now() if at is None else at) >= info.expires_at else 0

    def is_valid(self, token: str, at: float | None = None) -> bool:
        return self.token_status(token, at) == 0

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def issued(self, appid: str | None = None) -> list[str]:
        """Every token issued so far (for ``corpid:agentid``, or all), oldest first."""
        with self.lock:
            return [t.value for t in self._tokens.values() if appid is None or t.appid == appid]

    def invalidate(self, token: str) -> None:
        """WeCom "may invalidate tokens early for operational reasons": business
        APIs answer 40014 from now on and gettoken issues a new token."""
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.invalidated = True

    # --------------------------------------------------------------- internals

    def _err(self, errcode: int, detail: str = "") -> Reply:
        hint = f"{int(self.now())}_{secrets.randbelow(100)}_{secrets.token_hex(16)}"
        text = _ERRMSG.get(errcode, "error")
        return 200, {"errcode": errcode,
                     "errmsg": f"{text}, hint: [{hint}]{detail}, more info at "
                               f"https://open.work.weixin.qq.com/devtool/query?e={errcode}"}

    def _app_for(self, corpid: str, secret: str) -> App | None:
        for app in self.apps.values():
            if app.corpid == corpid and app.secret == secret:
                return app
        return None

    def _issue(self, app: App) -> Token:
        now = self.now()
        while True:
            # Real tokens are opaque base64-ish strings of up to 512 bytes.
            value = secrets.token_urlsafe(96)
            if value not in self._tokens:
                break
        token = Token(value, app.appid, now, now + app.expires_in)
        self._tokens[value] = token
        self._current[app.appid] = token
        return token

    def call_fields(self, request: Request) -> dict[str, Any]:
        if request.path == TOKEN_PATH:
            corpid = request.query.get("corpid") or None
            app = self._app_for(corpid or "", request.query.get("corpsecret", ""))
            return {"appid": app.appid if app else corpid, "corpid": corpid,
                    "agentid": app.agentid if app else None}
        if request.path == API_PATH:
            token = request.query.get("access_token") or None
            info = self._tokens.get(token or "")
            return {"appid": info.appid if info else None, "token": token}
        return {"appid": self.extract_appid(request)}

    # ---------------------------------------------------------------- handlers

    @route("GET", TOKEN_PATH)
    def _gettoken(self, req: Request) -> Reply:
        corpid = req.query.get("corpid", "")
        secret = req.query.get("corpsecret", "")
        if not corpid:
            return self._err(41002)
        if not secret:
            return self._err(41004)
        if not any(app.corpid == corpid for app in self.apps.values()):
            return self._err(40013)
        app = self._app_for(corpid, secret)
        if app is None:
            return self._err(40001)
        if app.untrusted_ip:
            return self._err(60020, f", from ip: {app.untrusted_ip}")
        now = self.now()
        current = self._current.get(app.appid)
        if current is None or current.invalidated or current.expires_at - now < self.min_remaining_s:
            current = self._issue(app)
        req.note(token=current.value)
        if self.repeat_expires_in == "full":
            expires_in = app.expires_in
        else:
            expires_in = max(1, math.floor(current.expires_at - now))
        return 200, {"errcode": 0, "errmsg": "ok", "access_token": current.value, "expires_in": expires_in}

    @route("GET", API_PATH)
    def _api_domain_ip(self, req: Request) -> Reply:
        token = req.query.get("access_token")
        if not token:
            return self._err(41001)
        status = self.token_status(token)
        if status:
            return self._err(status)
        return 200, {"errcode": 0, "errmsg": "ok", "ip_list": list(self.ip_list)}


# ------------------------------------------------------------------ standalone


def _parse_app(spec: str) -> tuple[str, str, str, int]:
    parts = spec.split(":")
    if len(parts) not in (3, 4) or not all(parts[:3]) or not parts[1].isdigit():
        raise argparse.ArgumentTypeError(f"expected CORPID:AGENTID:SECRET[:EXPIRES_IN], got {spec!r}")
    return parts[0], parts[1], parts[2], int(parts[3]) if len(parts) == 4 else 7200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake WeCom token platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app", type=_parse_app, action="append", default=[],
                        metavar="CORPID:AGENTID:SECRET[:EXPIRES_IN]")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every call")
    args = parser.parse_args(argv)

    fake = FakeWeCom(port=args.port)
    for corpid, agentid, secret, expires_in in args.app:
        fake.add_app(corpid, agentid, secret, expires_in=expires_in)
    fake.delay(args.delay)

    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
