"""WeChat Official Account / Mini Program access_token.

Two endpoints with different rules (platform-facts §1):

- stable (``POST /cgi-bin/stable_token``, the default): while the current
  token is valid the platform returns it again, with ``expires_in`` the
  *remaining* life; it rotates in the last 5 minutes. ``force_refresh``
  kills the old token and is limited to 20 a day, 30 s apart, so it is used
  only when a normal call hands back the very token being replaced.
- classic (``GET /cgi-bin/token``): every call issues a new token and the
  previous one survives about 5 minutes.
"""

from __future__ import annotations

import math
import re

from ..core.domain import Credential, Token
from ..core.errors import RateLimited, Unavailable, UpstreamError
from .base import HttpProvider, ProviderContext, TokenPlacement, redact

# Asking again soon can help: -1 system busy.
RETRYABLE = {-1}

# force_refresh limits (platform-facts §1.2); the day is Beijing's.
FORCE_SPACING_S = 30
FORCE_PER_DAY = 20
BEIJING_OFFSET_S = 8 * 3600

# The platform will refuse again for a while: 45009 until the daily quota
# is reset, 45011 until the next minute.
PAUSES = {45009: 300.0, 45011: 60.0}

# Codes whose cause an operator must fix; listed so the message can say what.
HINTS = {
    40001: "AppSecret is wrong, or the token is not the latest",
    40002: "invalid grant_type",
    40013: "invalid appid",
    40125: "invalid appsecret",
    40164: "caller IP is not in the app's API IP whitelist",
    61004: "caller IP is not in the app's API IP whitelist",
    40243: "AppSecret is frozen; unfreeze it in the console",
    41002: "appid missing",
    41004: "secret missing",
    43002: "POST required",
    45009: "daily quota for token calls exhausted (clear_quota resets it)",
    45011: "per-minute call limit reached",
    50004: "token API forbidden for this account",
    50007: "account frozen",
    89503: "this IP awaits the administrator's confirmation",
    89506: "the administrator rejected this IP (retry after 24 h)",
    89507: "the administrator rejected this IP (retry after 1 h)",
}

_IP = re.compile(r"invalid ip ([0-9a-fA-F.:]+)")


class WeChatProvider(HttpProvider):
    platform = "wechat"
    ticket_types: tuple[str, ...] = ("jsapi", "wx_card")
    appid_example = "wx1234567890abcdef"
    # 40001 not the latest token, 40014 invalid, 42001 expired.
    invalid_token_codes: frozenset[int | str] = frozenset({40001, 40014, 42001})
    # Business APIs take ?access_token= (wechatpy, WxJava, silenceper alike).
    token_placement = TokenPlacement(query="access_token")

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="wechat", base_url=ctx.settings.wechat_api_base,
                            token_mode=ctx.settings.wechat_token_mode, locks=ctx.locks, counters=ctx.counters)

    @property
    def mode(self) -> str:
        return str(self.options.get("token_mode", "stable"))

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        if self.mode == "classic":
            return self._classic(credential)
        token = self._stable(credential, force=False)
        if replacing is not None and token.value == replacing:
            # Normal mode handed back the token the caller wants gone (it
            # was reported invalid); only force_refresh replaces it.
            self._spend_force_budget(credential.appid)
            token = self._stable(credential, force=True)
        return token

    def _spend_force_budget(self, appid: str) -> None:
        """force_refresh is allowed 20 times a day, 30 s apart; a call over
        either limit is refused by the platform without a refresh, so refuse
        it here (429) and keep the day's budget for real leaks."""
        locks = self.options.get("locks")
        counters = self.options.get("counters")
        if locks is not None and not locks.claim(f"wechat-force-spacing:{appid}", lease_s=FORCE_SPACING_S):
            raise RateLimited(f"WeChat allows force_refresh once per {FORCE_SPACING_S} s for appid {appid}; "
                              "the current token was just replaced", FORCE_SPACING_S)
        if counters is None:
            return
        now = self.clock()
        day = math.floor((now + BEIJING_OFFSET_S) / 86400) * 86400 - BEIJING_OFFSET_S
        try:
            wait_s = counters.hit(f"wechat-force-day:{appid}", limit=FORCE_PER_DAY, window_start=day,
                                  window_end=day + 86400, now=now)
        except Unavailable:
            return
        if wait_s is not None:
            raise RateLimited(f"WeChat allows {FORCE_PER_DAY} force_refresh calls a day for appid {appid}; "
                              "today's are used up", wait_s)

    def _classic(self, credential: Credential) -> Token:
        started = self.clock()
        _, body = self.request_json(
            "GET", "/cgi-bin/token", secrets=[credential.secret],
            params={"grant_type": "client_credential", "appid": credential.appid, "secret": credential.secret},
        )
        return self._token(body, started, credential)

    def _stable(self, credential: Credential, *, force: bool) -> Token:
        started = self.clock()
        _, body = self.request_json(
            "POST", "/cgi-bin/stable_token", secrets=[credential.secret],
            json={"grant_type": "client_credential", "appid": credential.appid,
                  "secret": credential.secret, "force_refresh": force},
        )
        return self._token(body, started, credential)

    def fetch_ticket(self, access_token: str, ticket_type: str) -> Token:
        """``GET /cgi-bin/ticket/getticket``. Tickets report ``expires_in``
        7200 on every call within their life, so the true expiry is only
        known from the first fetch: the caller caches it with its margin."""
        started = self.clock()
        _, body = self.request_json("GET", "/cgi-bin/ticket/getticket", secrets=[access_token],
                                    params={"access_token": access_token, "type": ticket_type})
        errcode = body.get("errcode")
        if isinstance(errcode, int) and errcode != 0:
            raise self._error(errcode, str(body.get("errmsg", "")), [access_token])
        ticket = body.get("ticket")
        expires_in = body.get("expires_in")
        if not isinstance(ticket, str) or not ticket or not isinstance(expires_in, int | float) or expires_in <= 0:
            raise UpstreamError(self.platform, "answer has no ticket/expires_in", retryable=True)
        return Token(value=ticket, expires_at=started + float(expires_in), fetched_at=started)

    def _token(self, body: dict[str, object], started: float, credential: Credential) -> Token:
        errcode = body.get("errcode")
        if isinstance(errcode, int) and errcode != 0:
            raise self._error(errcode, str(body.get("errmsg", "")), [credential.secret])
        value = body.get("access_token")
        expires_in = body.get("expires_in")
        if not isinstance(value, str) or not value or not isinstance(expires_in, int | float) or expires_in <= 0:
            raise UpstreamError(self.platform, "answer has no access_token/expires_in", retryable=True)
        return Token(value=value, expires_at=started + float(expires_in), fetched_at=started)

    def _error(self, errcode: int, errmsg: str, secrets: list[str]) -> UpstreamError:
        errmsg = redact(errmsg, secrets)
        hint = HINTS.get(errcode)
        if errcode in (40164, 61004):
            match = _IP.search(errmsg)
            if match:
                hint = f"caller IP {match.group(1)} is not in the app's API IP whitelist"
        message = f"{hint} ({errmsg})" if hint else errmsg or "no errmsg"
        return UpstreamError(self.platform, message, errcode=errcode, retryable=errcode in RETRYABLE,
                             pause_s=PAUSES.get(errcode))
