"""Fake WeChat Official Account / Mini Program token platform (platform-facts §1).

Endpoints:
  GET  /cgi-bin/token                  classic: every call issues a new token, the previous
                                       ones keep working for min(grace_s, remaining life)
  POST /cgi-bin/stable_token           stable: same token until its last rotate_before_s,
                                       force_refresh kills the previous one (20/day, 30 s apart)
  GET  /cgi-bin/ticket/getticket       jsapi / wx_card ticket, cached per (appid, type)
  GET  /cgi-bin/get_api_domain_ip      business-API stand-in that checks an access_token

Run standalone: ``python -m tests.fakes.wechat --port 8080 --app wx1:secret1[:7200]``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from .server import FakePlatform, Reply, Request, route, serve_until_stopped

__all__ = ["App", "FakeWeChat", "Ticket", "Token", "main"]

TOKEN_PATH = "/cgi-bin/token"
STABLE_PATH = "/cgi-bin/stable_token"
TICKET_PATH = "/cgi-bin/ticket/getticket"
API_PATH = "/cgi-bin/get_api_domain_ip"

CLASSIC = "classic"
STABLE = "stable"
TICKET_TYPES = ("jsapi", "wx_card")

# WeChat counts daily quotas per Beijing calendar day (UTC+8).
_BEIJING_OFFSET_S = 8 * 3600

_ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40097: "invalid args",
    40125: "invalid appsecret",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    43002: "require POST method",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit  mustslower  retry next minute",
}


def _rid() -> str:
    return f"{secrets.token_hex(4)}-{secrets.token_hex(4)}-{secrets.token_hex(4)}"


@dataclass
class App:
    appid: str
    secret: str
    expires_in: int = 7200  # lifetime of newly issued tokens
    whitelist_error_ip: str | None = None  # when set, token endpoints answer 40164


@dataclass
class Token:
    value: str
    appid: str
    pool: str  # CLASSIC or STABLE
    issued_at: float
    expires_at: float  # natural expiry
    valid_until: float  # <= expires_at; lowered when superseded or force-refreshed
    rejected: bool = False  # set by invalidate(): business APIs answer 40001


@dataclass
class Ticket:
    value: str
    appid: str
    type: str
    expires_at: float


class FakeWeChat(FakePlatform):
    """In-memory WeChat token platform, faithful to the documented token semantics."""

    appid_keys = ("appid",)

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self.apps: dict[str, App] = {}
        # Knobs, all per instance so tests can shrink them.
        self.grace_s: float = 300  # classic: old token survives this long after rotation
        self.rotate_before_s: float = 300  # stable: rotate when this little life is left
        self.force_refresh_daily_limit: int = 20
        self.force_refresh_spacing_s: float = 30
        self.force_refresh_grace_s: float = 0  # undocumented; assume immediate death
        self.daily_quota: int = 2000  # token fetches per appid, endpoint and day (45009)
        self.stable_daily_quota: int | None = None  # stable endpoint's own limit; None: daily_quota
        self.ticket_expires_in: int = 7200
        self.ip_list: list[str] = ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
        self._tokens: dict[str, Token] = {}
        self._live: dict[tuple[str, str], list[Token]] = {}  # (appid, pool) -> unexpired
        self._stable_current: dict[str, Token] = {}
        self._tickets: dict[tuple[str, str], Ticket] = {}
        self._quota_used: dict[tuple[str, str, int], int] = {}
        self._force_log: dict[str, list[float]] = {}  # appid -> force_refresh times

    # ------------------------------------------------------------------ setup

    def add_app(
        self,
        appid: str,
        secret: str,
        *,
        expires_in: int = 7200,
        whitelist_error_ip: str | None = None,
    ) -> App:
        app = App(appid, secret, expires_in, whitelist_error_ip)
        with self.lock:
            self.apps[appid] = app
        return app

    # ---------------------------------------------------------- test helpers

    def token_status(self, token: str) -> int:
        """The errcode a business API would give `token` now: 0, 40001 or 42001."""
        with self.lock:
            info = self._tokens.get(token)
            now = self.now()
            if info is None:
                return 40001
            if now >= info.expires_at:
                return 42001  # natural expiry
            if info.rejected or now >= info.valid_until:
                return 40001  # superseded ("not latest") or force-refreshed away
            return 0

    def is_valid(self, token: str) -> bool:
        return self.token_status(token) == 0

    def token_info(self, token: str) -> Token | None:
        with self.lock:
            return self._tokens.get(token)

    def current_token(self, appid: str, mode: str = STABLE) -> str | None:
        """The newest still-valid token of a pool (what the platform would hand out)."""
        with self.lock:
            live = [t for t in self._live.get((appid, mode), []) if self.is_valid(t.value)]
            return live[-1].value if live else None

    def issued(self, appid: str | None = None, mode: str | None = None) -> list[str]:
        """All tokens issued so far, oldest first."""
        with self.lock:
            return [
                t.value
                for t in self._tokens.values()
                if (appid is None or t.appid == appid) and (mode is None or t.pool == mode)
            ]

    def invalidate(self, token: str) -> None:
        """Make business APIs reject `token` with 40001 from now on.

        Token endpoints are not affected: stable normal mode keeps returning it
        while it is current, so only force_refresh gets a client out of this state.
        """
        with self.lock:
            info = self._tokens.get(token)
            if info is not None:
                info.rejected = True

    def reset_quota(self, appid: str | None = None) -> None:
        """Like clear_quota: forget today's fetch counts."""
        with self.lock:
            for key in list(self._quota_used):
                if appid is None or key[0] == appid:
                    del self._quota_used[key]

    # --------------------------------------------------------------- internals

    def _err(self, errcode: int, errmsg: str | None = None) -> Reply:
        text = errmsg if errmsg is not None else _ERRMSG.get(errcode, "error")
        return 200, {"errcode": errcode, "errmsg": f"{text} rid: {_rid()}"}

    def _day(self) -> int:
        return int((self.now() + _BEIJING_OFFSET_S) // 86400)

    def _new_token_value(self) -> str:
        while True:
            value = "83_" + secrets.token_urlsafe(100)  # ~137 chars, like real tokens
            if value not in self._tokens:
                return value

    def _issue(self, app: App, pool: str) -> Token:
        now = self.now()
        token = Token(
            value=self._new_token_value(),
            appid=app.appid,
            pool=pool,
            issued_at=now,
            expires_at=now + app.expires_in,
            valid_until=now + app.expires_in,
        )
        self._tokens[token.value] = token
        live = [t for t in self._live.get((app.appid, pool), []) if t.expires_at > now]
        live.append(token)
        self._live[(app.appid, pool)] = live
        return token

    def _check_credentials(self, params: dict[str, Any], bad_secret: int) -> App | Reply:
        """Validation shared by both token endpoints: the app, or the error reply."""
        appid = params.get("appid")
        secret = params.get("secret")
        if not appid:
            return self._err(41002)  # appid missing (also what a stable form body gets)
        if not secret:
            return self._err(41004)  # appsecret missing
        if params.get("grant_type") != "client_credential":
            return self._err(40002)  # invalid grant_type
        app = self.apps.get(str(appid))
        if app is None:
            return self._err(40013)  # invalid appid
        if secret != app.secret:
            return self._err(bad_secret)  # classic says 40001, stable says 40125
        if app.whitelist_error_ip:
            ip = app.whitelist_error_ip  # 40164: caller IP not in the API IP whitelist
            return self._err(40164, f"invalid ip {ip} ipv6 ::ffff:{ip}, not in whitelist")
        return app

    def _take_quota(self, appid: str, pool: str) -> bool:
        limit = self.daily_quota
        if pool == STABLE and self.stable_daily_quota is not None:
            limit = self.stable_daily_quota
        key = (appid, pool, self._day())
        used = self._quota_used.get(key, 0)
        if used >= limit:
            return False
        self._quota_used[key] = used + 1
        return True

    def call_fields(self, request: Request) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if request.path == TOKEN_PATH:
            fields["mode"] = CLASSIC
            fields["appid"] = request.query.get("appid") or None
        elif request.path == STABLE_PATH:
            body = request.json_object()
            fields["mode"] = STABLE
            fields["appid"] = body.get("appid") or None
            fields["force_refresh"] = body.get("force_refresh") is True
        elif request.path in (TICKET_PATH, API_PATH):
            fields["mode"] = "ticket" if request.path == TICKET_PATH else "api"
            token = request.query.get("access_token", "")
            info = self._tokens.get(token)
            fields["appid"] = info.appid if info is not None else None
            fields["token"] = token or None
            if request.path == TICKET_PATH:
                fields["type"] = request.query.get("type")
        else:
            fields["appid"] = self.extract_appid(request)
        return fields

    # ---------------------------------------------------------------- handlers

    @route("GET", TOKEN_PATH)
    def _classic_token(self, req: Request) -> Reply:
        app = self._check_credentials(dict(req.query), bad_secret=40001)
        if not isinstance(app, App):
            return app
        if not self._take_quota(app.appid, CLASSIC):
            return self._err(45009)  # daily fetch quota
        now = self.now()
        # Every call rotates; earlier tokens keep working for min(grace, own remaining life).
        for old in self._live.get((app.appid, CLASSIC), []):
            old.valid_until = min(old.valid_until, now + self.grace_s)
        token = self._issue(app, CLASSIC)
        req.note(token=token.value)
        return 200, {"access_token": token.value, "expires_in": app.expires_in}

    @route("GET", STABLE_PATH)
    def _stable_token_get(self, req: Request) -> Reply:
        return self._err(43002)  # require POST method

    @route("POST", STABLE_PATH)
    def _stable_token(self, req: Request) -> Reply:
        # Only a JSON body is understood; a form body looks like "no appid" (41002).
        params = req.json_object()
        app = self._check_credentials(params, bad_secret=40125)
        if not isinstance(app, App):
            return app
        now = self.now()
        force = params.get("force_refresh") is True
        if force:
            history = self._force_log.get(app.appid, [])
            today = sum(1 for t in history if self._same_day(t))
            if today >= self.force_refresh_daily_limit:
                return self._err(45009)  # force_refresh: 20 per day
            if history and now - history[-1] < self.force_refresh_spacing_s:
                return self._err(45011)  # force_refresh: at least 30 s apart
        if not self._take_quota(app.appid, STABLE):
            return self._err(45009)

        current = self._stable_current.get(app.appid)
        if force:
            self._force_log.setdefault(app.appid, []).append(now)
            for old in self._live.get((app.appid, STABLE), []):
                old.valid_until = min(old.valid_until, now + self.force_refresh_grace_s)
            current = self._issue(app, STABLE)
        elif current is None or current.expires_at - now <= self.rotate_before_s:
            # Early rotation: the old token keeps working until its own expiry.
            current = self._issue(app, STABLE)
        self._stable_current[app.appid] = current
        req.note(token=current.value)
        # expires_in is the REMAINING life of the returned token, in whole seconds.
        remaining = round(current.expires_at - now)
        return 200, {"access_token": current.value, "expires_in": remaining}

    def _same_day(self, t: float) -> bool:
        return int((t + _BEIJING_OFFSET_S) // 86400) == self._day()

    @route("GET", TICKET_PATH)
    def _ticket(self, req: Request) -> Reply:
        token = req.query.get("access_token")
        if not token:
            return self._err(41001)
        status = self.token_status(token)
        if status:
            return self._err(status)
        ticket_type = req.query.get("type", "")
        if ticket_type not in TICKET_TYPES:
            return self._err(40097)
        appid = self._tokens[token].appid
        now = self.now()
        ticket = self._tickets.get((appid, ticket_type))
        if ticket is None or ticket.expires_at <= now:
            ticket = Ticket(
                value=secrets.token_urlsafe(64),
                appid=appid,
                type=ticket_type,
                expires_at=now + self.ticket_expires_in,
            )
            self._tickets[(appid, ticket_type)] = ticket
        req.note(ticket=ticket.value)
        # Reported expires_in is always the full lifetime, not the remaining one.
        return 200, {
            "errcode": 0,
            "errmsg": "ok",
            "ticket": ticket.value,
            "expires_in": self.ticket_expires_in,
        }

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


def _parse_app(spec: str) -> tuple[str, str, int]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"expected APPID:SECRET[:EXPIRES_IN], got {spec!r}")
    expires_in = int(parts[2]) if len(parts) == 3 else 7200
    return parts[0], parts[1], expires_in


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake WeChat token platform on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--app", type=_parse_app, action="append", default=[], metavar="APPID:SECRET[:EXPIRES_IN]")
    parser.add_argument("--daily-quota", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every call")
    args = parser.parse_args(argv)

    fake = FakeWeChat(port=args.port)
    fake.daily_quota = args.daily_quota
    for appid, secret, expires_in in args.app:
        fake.add_app(appid, secret, expires_in=expires_in)
    fake.delay(args.delay)

    return serve_until_stopped(fake)


if __name__ == "__main__":
    sys.exit(main())
