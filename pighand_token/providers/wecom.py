"""WeCom (企业微信) app access_token (platform-facts §4).

``GET /cgi-bin/gettoken?corpid=ID&corpsecret=SECRET``. Every app (agent) of a
corp has its own secret and its token works only for that app, so the token
appid is ``<corpid>:<agentid>`` and the secret is that app's corpsecret.

While a token is valid the platform hands back the same token (older wording
of the gettoken page); a new one comes only after expiry, or after WeCom
invalidated the old one early. A refresh that returns the token being
replaced is therefore normal and is not retried.
"""

from __future__ import annotations

import logging
import re

from ..core.domain import Credential, Token
from ..core.errors import BadRequest, UpstreamError
from .base import HttpProvider, ProviderContext, TokenPlacement, redact

log = logging.getLogger(__name__)

TOKEN_PATH = "/cgi-bin/gettoken"

# -1 system busy: the error-code page says retry (at most 3 times).
RETRYABLE = {-1}

# 45009 (WeCom's global error table: call frequency limit): gettoken is
# throttled when polled, so leave it alone for a minute.
PAUSES = {45009: 60.0}

# What each code means, for the message. Only -1 is retried: 40001, 40013
# and 60020 are configuration an operator must fix, asking again cannot help.
HINTS = {
    -1: "system busy",
    40001: "corpsecret is wrong, or belongs to another app or corp",
    40013: "invalid corpid",
    41002: "corpid missing",
    41004: "corpsecret missing",
    45009: "API call frequency limit reached",
    60020: "caller IP is not a trusted IP of this app",
}

_CORPID = re.compile(r"[A-Za-z0-9_.-]+")
_FROM_IP = re.compile(r"from ip: ?([0-9a-fA-F.:]+?)(?:,|\s|$)")


def _split(appid: str) -> tuple[str, str] | None:
    corpid, sep, agentid = appid.partition(":")
    if not sep or not _CORPID.fullmatch(corpid) or not agentid.isdigit() or not agentid.isascii():
        return None
    return corpid, agentid




class WeComProvider(HttpProvider):
    platform = "wecom"
    # The same token comes back until it expires: the service then serves it
    # to its end rather than asking again, and never extends its expiry.
    keeps_token_until_expiry = True
    # Business APIs take ?access_token=; 40014 invalid, 42001 expired
    # (40001 is a wrong secret here, not a stale token).
    token_placement = TokenPlacement(query="access_token")
    invalid_token_codes: frozenset[int | str] = frozenset({40014, 42001})
    appid_pattern = _CORPID.pattern + ":[0-9]+"
    appid_example = "ww0123456789abcdef:1000002"

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        return cls.standard(ctx, platform="wecom", base_url=ctx.settings.wecom_api_base)

    # -- appids and secrets --------------------------------------------------
    def appid_error(self, appid: str) -> str | None:
        # gettoken takes no agentid, but a corp has one secret and one token
        # per app, so the agentid is what tells two apps of one corp apart.
        # WeCom agentids are numbers (e.g. 1000002).
        if _split(appid) is None:
            return (f"wecom appid must be <corpid>:<agentid> with a numeric agentid "
                    f"(e.g. ww0123456789abcdef:1000002), not {appid!r}")
        return None

    def check_credential(self, appid: str, secret: str) -> None:
        problem = self.appid_error(appid)
        if problem:
            raise BadRequest(problem)
        if not secret or secret != secret.strip() or any(c.isspace() for c in secret):
            # A pasted secret with spaces or a newline fails later as 40001.
            raise BadRequest("wecom secret must be the app's corpsecret, without spaces")

    # -- the call ------------------------------------------------------------
    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        parts = _split(credential.appid)
        if parts is None:
            raise BadRequest(self.appid_error(credential.appid) or "malformed wecom appid")
        corpid, _ = parts
        started = self.clock()
        _, body = self.request_json(
            "GET", TOKEN_PATH, secrets=[credential.secret],
            params={"corpid": corpid, "corpsecret": credential.secret},
        )
        token = self._token(body, started, credential)
        if replacing is not None and token.value == replacing:
            # The platform issues a new token only after expiry; asking
            # again would only poll gettoken (which WeCom throttles).
            log.info("wecom %s: the platform handed back the current token (valid for %.0f s more)",
                     credential.appid, token.expires_at - started)
        return token

    def _token(self, body: dict[str, object], started: float, credential: Credential) -> Token:
        errcode = body.get("errcode", 0)
        if not isinstance(errcode, int) or isinstance(errcode, bool):
            raise UpstreamError(self.platform, "answer has a non-numeric errcode", retryable=True)
        if errcode != 0:
            raise self._error(errcode, str(body.get("errmsg", "")), credential)
        value = body.get("access_token")
        expires_in = body.get("expires_in")
        if (not isinstance(value, str) or not value or isinstance(expires_in, bool)
                or not isinstance(expires_in, int | float) or expires_in <= 0):
            raise UpstreamError(self.platform, "answer has no access_token/expires_in", retryable=True)
        return Token(value=value, expires_at=started + float(expires_in), fetched_at=started)

    def _error(self, errcode: int, errmsg: str, credential: Credential) -> UpstreamError:
        errmsg = redact(errmsg, [credential.secret])
        hint = HINTS.get(errcode)
        if errcode == 60020:
            match = _FROM_IP.search(errmsg)
            if match:
                hint = f"caller IP {match.group(1)} is not a trusted IP of this app (add it in the admin console)"
        message = f"{hint} ({errmsg})" if hint and errmsg else hint or errmsg or "no errmsg"
        return UpstreamError(self.platform, message, errcode=errcode, retryable=errcode in RETRYABLE,
                             pause_s=PAUSES.get(errcode))
