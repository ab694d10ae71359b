"""DingTalk app access token, new API (platform-facts §5).

``POST /v1.0/oauth2/accessToken`` with the JSON body ``{"appKey", "appSecret"}``
(a form body is refused: "body is mandatory") answers
``{"accessToken", "expireIn"}``. Errors are non-2xx answers with a JSON body
``{"code": "<string>", "message", "requestid"}``; the string code is the errcode.

Within its validity the platform returns the SAME token and extends its life,
so a refresh that hands back the token being replaced is the normal outcome:
the token is stored again with its new expiry, nothing is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from ..core.domain import Credential, Token
from ..core.errors import BadRequest, UpstreamError
from .base import HttpProvider, ProviderContext, TokenPlacement, redact

log = logging.getLogger(__name__)

TOKEN_PATH = "/v1.0/oauth2/accessToken"

# Codes an operator or a developer must act on; not retried.
HINTS = {
    "invalidClientIdOrSecret": "appKey or appSecret is wrong (or the app has no published version yet)",
    "Missingbody": "request body missing; the endpoint takes a JSON body only",
    "MissingappKey": "appKey missing",
    "MissingappSecret": "appSecret missing",
    "InvalidAction.NotFound": "no such API (wrong dingtalk_api_base?)",
}

# Rate limits of the v1.0 gateway (HTTP 403/429 with these codes): asking
# again a moment later can help.
_THROTTLED_PREFIX = "Forbidden.AccessDenied.QpsLimit"


class DingTalkProvider(HttpProvider):
    platform = "dingtalk"
    # The v1.0 API (api.dingtalk.com, dingtalk_api_base) takes the token in
    # this header and rejects a bad one with HTTP 400/401 and
    # {"code": "InvalidAuthentication"} (platform-facts §5).
    token_placement = TokenPlacement(header="x-acs-dingtalk-access-token")
    invalid_token_codes: frozenset[int | str] = frozenset({"InvalidAuthentication"})
    appid_pattern = "[A-Za-z0-9_.-]{1,128}"
    appid_example = "ding0123456789abcdef"

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="dingtalk", base_url=ctx.settings.dingtalk_api_base)

    # -- appids and secrets --------------------------------------------------
    def appid_error(self, appid: str) -> str | None:
        if ":" in appid:
            # appKeys (Client IDs) are single words like dingxxxxxxxxxxxxxxxx;
            # "corp:agent" is the WeCom form.
            return f"dingtalk appid must be the app's appKey (Client ID), not {appid!r}"
        return None

    def check_credential(self, appid: str, secret: str) -> None:
        problem = self.appid_error(appid)
        if problem:
            raise BadRequest(problem)
        if not secret or any(c.isspace() for c in secret):
            # A pasted secret with spaces or a newline fails later as invalidClientIdOrSecret.
            raise BadRequest("dingtalk secret must be the app's appSecret (Client Secret), without spaces")

    # -- the call ------------------------------------------------------------
    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        started = self.clock()
        status, body = self.request_json(
            "POST", TOKEN_PATH, secrets=[credential.secret], accept_status=True,
            json={"appKey": credential.appid, "appSecret": credential.secret},
        )
        if is_dingtalk_error(status, body):
            raise self._error(status, body, credential)
        value = body.get("accessToken")
        expire_in = body.get("expireIn")
        if (not isinstance(value, str) or not value or isinstance(expire_in, bool)
                or not isinstance(expire_in, int | float) or expire_in <= 0):
            raise UpstreamError(self.platform, "answer has no accessToken/expireIn", retryable=True)
        if replacing is not None and value == replacing:
            # Expected: the platform extends the current token instead of issuing a new one.
            log.info("dingtalk %s: the platform extended the current token by %.0f s",
                     credential.appid, float(expire_in))
        return Token(value=value, expires_at=started + float(expire_in), fetched_at=started)

    def _error(self, status: int, body: dict[str, object], credential: Credential) -> UpstreamError:
        return dingtalk_error(self.platform, status, body, [credential.secret])


def is_dingtalk_error(status: int, body: Mapping[str, object], value_key: str = "accessToken") -> bool:
    """A v1.0 answer that reports an error: non-2xx, or a ``code`` without the value."""
    return status >= 400 or ("code" in body and value_key not in body)


def dingtalk_error(platform: str, status: int, body: Mapping[str, object], secrets: Iterable[str], *,
                   hints: Mapping[str, str] = HINTS) -> UpstreamError:
    """The UpstreamError for a v1.0 error answer ``{"code", "message", "requestid"}``
    (the string code is the errcode), without any of ``secrets``."""
    raw_code = body.get("code")
    code = str(raw_code) if raw_code not in (None, "") else None
    message = str(body.get("message") or "")
    requestid = body.get("requestid")
    hint = hints.get(code or "")
    detail = message or f"HTTP {status}"
    if requestid:
        # DingTalk support asks for the request id.
        detail += f"; requestid {requestid}"
    text = redact(f"{hint} ({detail})" if hint else detail, secrets)
    throttled = status == 429 or (code or "").startswith(_THROTTLED_PREFIX)
    return UpstreamError(platform, text, errcode=code, retryable=throttled)
