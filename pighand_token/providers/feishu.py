"""Feishu / Lark custom (self-built) app access tokens (platform-facts §2).

``feishu`` serves the tenant_access_token, ``feishu_app`` the
app_access_token, both from ``POST /open-apis/auth/v3/<kind>/internal`` on
open.feishu.cn; ``lark`` and ``lark_app`` are the same calls on
open.larksuite.com. The appid is the app's ``app_id`` (``cli_...``), the
secret its ``app_secret``.

What matters to a token service:

- Success is ``code == 0`` whatever the HTTP status: some clients see errors
  as HTTP 400 with the usual JSON body, so 4xx answers are read, not raised.
- ``expire`` is the *remaining* life of the token returned.
- While 30 minutes or more remain, the platform hands back the current
  token; in its last 30 minutes it issues a new one and the old one stays
  valid until its own expiry. A refresh earlier than that therefore gets
  the token being replaced, with its shorter remaining life. That is
  accepted as it is: asking again would only return it again, and there is
  no force-refresh to escalate to.

How this meets the service's timing: a GET refreshes once the remaining
life drops below the margin, ``min(corn_interval, life / 2)``, and the
scheduler once it drops below margin + ``corn_interval``. With
``corn_interval`` under 900 s (the default is 300 s) both fall in the last
30 minutes, so every refresh gets a new token: one call per lifetime. With
a longer interval a refresh may get the same token back; stored with its
remaining life, its margin halves, so a later refresh lands in the last
30 minutes. That costs an extra call or two per lifetime, never a loop.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from ..core.domain import Credential, Token
from ..core.errors import UpstreamError
from .base import HttpProvider, ProviderContext, TokenPlacement, redact

log = logging.getLogger(__name__)

TENANT = "tenant"
APP = "app"

# Path and answer field per token kind (platform-facts §2.1).
PATHS = {
    TENANT: "/open-apis/auth/v3/tenant_access_token/internal",
    APP: "/open-apis/auth/v3/app_access_token/internal",
}
FIELDS = {TENANT: "tenant_access_token", APP: "app_access_token"}

# 99991400 "request trigger frequency limit": the open platform's rate limit,
# answered as HTTP 429 (HTTP 400 on older APIs) with the seconds until the
# window resets in the x-ogw-ratelimit-reset header
# (open.feishu.cn/document/server-docs/api-call-guide/frequency-control).
# A retry within the same call (under a second later) would fall in the same
# window, so it is not retried there; the reset time becomes the cooldown.
RATE_LIMIT = 99991400
RATE_LIMIT_RESET_HEADER = "x-ogw-ratelimit-reset"
# A header claiming a longer wait than this is not believed.
MAX_RATE_LIMIT_PAUSE_S = 300.0

# Codes whose cause an operator must fix; none is retried (platform-facts
# §2.1). Other non-zero codes are not retried either: the token endpoint has
# no documented "system busy" code, and 5xx answers and timeouts are already
# retried by the base.
HINTS = {
    10003: "invalid param: app_id or app_secret is empty or malformed",
    10014: "app_id does not exist or app_secret is wrong",
    RATE_LIMIT: "request frequency limit reached",
}


class FeishuProvider(HttpProvider):
    platform = "feishu"
    # Open APIs take "Authorization: Bearer <token>" (tenant or app token
    # alike); 99991663 invalid tenant token, 99991664 invalid app token,
    # 99991671 malformed token (platform-facts §2.1).
    token_placement = TokenPlacement(header="Authorization", prefix="Bearer ")
    invalid_token_codes: frozenset[int | str] = frozenset({99991663, 99991664, 99991671})
    appid_example = "cli_a1b2c3d4e5f6a7b8"

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="feishu", base_url=ctx.settings.feishu_api_base, kind=TENANT)

    @classmethod
    def build_app(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="feishu_app", base_url=ctx.settings.feishu_api_base, kind=APP)

    @classmethod
    def build_lark(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="lark", base_url=ctx.settings.lark_api_base, kind=TENANT)

    @classmethod
    def build_lark_app(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="lark_app", base_url=ctx.settings.lark_api_base, kind=APP)

    @property
    def kind(self) -> str:
        return TENANT if self.options.get("kind", TENANT) == TENANT else APP

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        started = self.clock()
        body = self.call(PATHS[self.kind], {"app_id": credential.appid, "app_secret": credential.secret},
                         [credential.secret])
        token = self.token_from(body, FIELDS[self.kind], started)
        if replacing is not None and token.value == replacing:
            # Not an error: the platform reissues only in the token's last
            # 30 minutes. If a caller found the token rejected (99991663 /
            # 99991664 / 99991671) while it has this long to live, someone
            # must look into it: it cannot be replaced before then.
            log.warning("%s handed back the token being replaced for appid %s (a new one is issued only in "
                        "its last 30 minutes); serving it, valid for another %.0f s",
                        self.platform, credential.appid, token.expires_at - started)
        return token

    def call(self, path: str, payload: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
        """POST ``payload`` to ``path``; the answer when its ``code`` is 0,
        else the platform's refusal as an UpstreamError (rate limits with
        the pause the platform asks for)."""
        headers: dict[str, str] = {}

        def keep_headers(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
            headers.update({k.lower(): v for k, v in response.headers.items()})
            return response

        status, body = self.request_json(
            "POST", path, secrets=secrets, accept_status=True,
            headers={"Content-Type": "application/json; charset=utf-8"}, json=payload,
            hooks={"response": [keep_headers]},
        )
        code = body.get("code")
        if isinstance(code, bool) or not isinstance(code, int) or code != 0:
            raise self._error(status, code, body.get("msg"), headers, secrets)
        return body

    def token_from(self, body: dict[str, Any], name: str, started: float) -> Token:
        value = body.get(name)
        expire = body.get("expire")
        if (not isinstance(value, str) or not value or isinstance(expire, bool)
                or not isinstance(expire, int | float) or expire <= 0):
            raise UpstreamError(self.platform, f"answer has no {name}/expire", retryable=True)
        return Token(value=value, expires_at=started + float(expire), fetched_at=started)

    hints: dict[int, str] = HINTS

    def _error(self, status: int, code: object, msg: object, headers: dict[str, str],
               secrets: list[str]) -> UpstreamError:
        text = redact(str(msg) if isinstance(msg, str) else "", secrets)
        if isinstance(code, int) and not isinstance(code, bool):
            errcode: int | None = code
        else:
            errcode = None
        if errcode == RATE_LIMIT or status == 429:
            pause_s = _reset_seconds(headers.get(RATE_LIMIT_RESET_HEADER))
            message = HINTS[RATE_LIMIT] + (f" ({text})" if text else "")
            if pause_s is not None:
                message += f"; the platform asks for {pause_s:g} s"
            return UpstreamError(self.platform, message, errcode=errcode, pause_s=pause_s)
        if errcode is None:
            detail = f"HTTP {status}, no code" + (f": {text}" if text else "")
            # A 200 without a code is a garbled answer; a 4xx without one is a refusal.
            return UpstreamError(self.platform, f"unexpected answer ({detail})", retryable=status < 400)
        hint = self.hints.get(errcode)
        message = f"{hint} ({text})" if hint and text else hint or text or "no msg"
        return UpstreamError(self.platform, message, errcode=errcode)


def _reset_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not seconds > 0:
        return None
    return min(seconds, MAX_RATE_LIMIT_PAUSE_S)
