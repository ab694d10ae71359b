"""WeCom (企业微信) third-party apps ("suites"), the corps that install them,
and the service provider itself (platform-facts §7.1, §7.3).

- ``wecom_suite`` (credential: suite id; suite secret, callback Token and
  EncodingAESKey): the ``suite_access_token``, made from the latest
  ``suite_ticket`` WeCom pushes to the instruction callback every 10
  minutes (life 30 min). WeCom has no API to ask for a push, so with no
  valid ticket stored the answer is 503 until the next push arrives.
- ``wecom_corp`` (token appid ``<suite_id>:<auth_corpid>``, served by the
  suite's credential): the corp's ``access_token``, made with the suite
  token from the permanent code the corp's install handed over once
  (``get_permanent_code``). The permanent code is the only thing that
  survives for a corp: it is kept sealed in SQL as the corp's grant.
- ``wecom_provider`` (credential: the provider's corpid and its
  ``provider_secret``): the ``provider_access_token``, pulled like any
  other token.

WeCom hands back the same token while it is valid (as gettoken does), so
all three keep a token to its end (``keeps_token_until_expiry``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from ..core.callbacks import (
    AccountAuthorized,
    AccountChanged,
    AccountRemoved,
    CallbackMessage,
    CallbackReply,
    CallbackRequest,
    Ignored,
    TicketPushed,
    UrlCheck,
    code_digest,
)
from ..core.domain import AccountGrant, Credential, PushedTicket, Token
from ..core.errors import BadRequest, MethodRefused, UpstreamError
from ..core.ports import AccountGrants, TokenSource
from .base import HttpProvider, ProviderContext, TokenPlacement, redact
from .callback_crypto import CallbackRejected, MalformedCallback, SignedQuery, open_xml_callback
from .third_party import AccountTokens, AppSecrets, PushedApp, TicketWait, check_app_secrets

log = logging.getLogger(__name__)

SUITE = "wecom_suite"
CORP = "wecom_corp"
PROVIDER = "wecom_provider"
TICKET_LIFE_S = 30 * 60.0
INSTALL_PAGE = "https://open.work.weixin.qq.com/3rdapp/install"

SUITE_TOKEN_PATH = "/cgi-bin/service/get_suite_token"
PRE_AUTH_CODE_PATH = "/cgi-bin/service/get_pre_auth_code"
PERMANENT_CODE_PATH = "/cgi-bin/service/get_permanent_code"
CORP_TOKEN_PATH = "/cgi-bin/service/get_corp_token"
PROVIDER_TOKEN_PATH = "/cgi-bin/service/get_provider_token"

# -1 system busy: the only code worth asking again for.
RETRYABLE = {-1}
# 45009: call frequency limit; leave the endpoint alone for a minute.
PAUSES = {45009: 60.0}
# The suite token WeCom no longer takes (invalid, expired): replace it once.
SUITE_TOKEN_REJECTED = frozenset({40082, 42009})
# The corp's authorization is gone (40084 invalid permanent code; 48004 API
# forbidden, which get_corp_token answers for a corp whose install is void):
# only a new install helps, retrying cannot.
REAUTHORIZE = frozenset({40084, 48004})
HINTS = {
    -1: "system busy",
    40013: "invalid provider corpid",
    40078: "the auth code is not valid (used already, expired, or another suite's)",
    40080: "the suite secret is wrong",
    40082: "the suite_access_token is not valid",
    40083: "unknown suite id",
    40085: ("the suite_ticket is not valid (expired, another suite's, or from before a secret change); "
            "WeCom pushes a new one every 10 minutes"),
    40091: "the provider secret is wrong",
    42009: "the suite_access_token has expired",
    45009: "API call frequency limit reached",
    48004: "API forbidden (for get_corp_token: the corp's install of the suite is no longer valid)",
}

_CORPID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _NoPushRequest(TicketWait):
    """A ticket wait for a platform that cannot be asked to push (WeCom)."""

    def ask(self, appid: str, ask: Callable[[], None], now: float) -> str:
        return ("WeCom has no API to ask for one: it pushes a suite_ticket every 10 minutes to a verified "
                "instruction callback URL")


class _WeComService(HttpProvider):
    """WeCom's service-provider API: errcodes, and calls made with a suite token."""

    keeps_token_until_expiry = True
    # A corp's token (wecom_corp) is an access_token like an internal app's.
    token_placement = TokenPlacement(query="access_token")
    invalid_token_codes: frozenset[int | str] = frozenset({40014, 42001})
    grants: AccountGrants | None = None
    tokens: TokenSource | None = None

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        provider = cls(session=ctx.session, base_url=ctx.settings.wecom_api_base,
                       timeout_s=ctx.settings.upstream_timeout, clock=ctx.clock)
        provider.grants = ctx.account_grants
        provider.tokens = ctx.tokens
        provider._setup(ctx)
        return provider

    def _setup(self, ctx: ProviderContext) -> None:
        """What one provider needs beyond the shared context."""

    def _check(self, body: Mapping[str, Any], secrets: list[str]) -> None:
        errcode = body.get("errcode", 0)
        if isinstance(errcode, bool) or not isinstance(errcode, int):
            raise UpstreamError(self.platform, "answer has a non-numeric errcode", retryable=True)
        if errcode != 0:
            raise self._error(errcode, str(body.get("errmsg", "")), secrets)

    def _error(self, errcode: int, errmsg: str, secrets: list[str]) -> UpstreamError:
        errmsg = redact(errmsg, secrets)
        hint = HINTS.get(errcode)
        message = f"{hint} ({errmsg})" if hint and errmsg else hint or errmsg or "no errmsg"
        return UpstreamError(self.platform, message, errcode=errcode, retryable=errcode in RETRYABLE,
                             pause_s=PAUSES.get(errcode))

    def _with_suite_token(self, suite_id: str, method: str, path: str, payload: dict[str, Any] | None,
                          secrets: list[str]) -> dict[str, Any]:
        """Call ``path`` with the suite token; when WeCom no longer takes it
        (40082/42009), replace it the way a caller's PUT would (one refresh
        however many callers saw it) and try once more."""
        assert self.tokens is not None
        token = self.tokens.get(SUITE, suite_id).value
        for attempt in (1, 2):
            kwargs: dict[str, Any] = {"params": {"suite_access_token": token}}
            if payload is not None:
                kwargs["json"] = payload
            _, body = self.request_json(method, path, secrets=[token, *secrets], **kwargs)
            errcode = body.get("errcode")
            if attempt == 1 and isinstance(errcode, int) and errcode in SUITE_TOKEN_REJECTED:
                log.warning("%s %s: WeCom refused the suite token (%s); replacing it", SUITE, suite_id, errcode)
                token = self.tokens.refresh(SUITE, suite_id, stale_token=token).value
                continue
            self._check(body, [token, *secrets])
            return body
        raise AssertionError("unreachable")

    def _token(self, body: Mapping[str, Any], name: str, started: float) -> Token:
        value = body.get(name)
        expires_in = body.get("expires_in")
        if (not isinstance(value, str) or not value or isinstance(expires_in, bool)
                or not isinstance(expires_in, int | float) or expires_in <= 0):
            raise UpstreamError(self.platform, f"answer has no {name}/expires_in", retryable=True)
        return Token(value=value, expires_at=started + float(expires_in), fetched_at=started)

    def _corp_token(self, suite_id: str, corpid: str, permanent_code: str) -> Token:
        started = self.clock()
        try:
            body = self._with_suite_token(suite_id, "POST", CORP_TOKEN_PATH,
                                          {"auth_corpid": corpid, "permanent_code": permanent_code},
                                          [permanent_code])
        except UpstreamError as exc:
            if exc.errcode in REAUTHORIZE:
                raise UpstreamError(
                    CORP, f"corp {corpid} must install suite {suite_id} again: WeCom no longer takes its "
                    f"permanent code ({exc.platform_message})", errcode=exc.errcode) from None
            raise
        return self._token(body, "access_token", started)


class WeComSuiteProvider(PushedApp, _WeComService):
    platform = SUITE
    account_platform = CORP
    # The service API takes ?suite_access_token=; 40082 invalid suite token,
    # 42009 expired (chanxuehong/wechat corp/error.go; WxJava WxCpErrorMsgEnum).
    token_placement = TokenPlacement(query="suite_access_token")
    invalid_token_codes: frozenset[int | str] = frozenset({40082, 42009, 40014, 42001})
    appid_example = "ww0123456789abcdef"
    wait: TicketWait

    def _setup(self, ctx: ProviderContext) -> None:
        self.wait = _NoPushRequest(SUITE, "suite_ticket", ctx.tickets, ctx.locks, ctx.clock)

    def check_credential(self, appid: str, secret: str) -> None:
        check_app_secrets(self.platform, appid, secret)

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        secrets = AppSecrets.parse(credential.secret, self.platform)
        ticket = self.wait.current(credential.appid, lambda: None)
        started = self.clock()
        hidden = [secrets.secret, ticket.value]
        _, body = self.request_json("POST", SUITE_TOKEN_PATH, secrets=hidden,
                                    json={"suite_id": credential.appid, "suite_secret": secrets.secret,
                                          "suite_ticket": ticket.value})
        self._check(body, hidden)
        return self._token(body, "suite_access_token", started)

    # -- the instruction callback -------------------------------------------------
    def open_callback(self, credential: Credential, request: CallbackRequest) -> CallbackMessage:
        method, query, body = request.method, request.query, request.body
        if method not in ("GET", "POST"):
            raise MethodRefused("WeCom posts its instructions; this URL takes GET (URL check) and POST",
                                ("GET", "POST"))
        secrets = AppSecrets.parse(credential.secret, self.platform)
        crypto = secrets.crypto(credential.appid)
        signed = SignedQuery.from_wechat(query)
        if method == "GET":
            echostr = query.get("echostr")
            if not echostr:
                raise MalformedCallback("callback query parameter echostr is missing")
            # The URL check's echostr carries the provider's corpid as its
            # receive id (the suite id on some consoles, empty for suites of
            # individual developers), and the provider's corpid need not be
            # known here. Any is accepted: the signature, made with this
            # suite's Token over the ciphertext, is what authenticates, and
            # the answer only echoes what the sender encrypted; nothing is stored.
            plain = crypto.verify_and_decrypt(signed.msg_signature, signed.timestamp, signed.nonce, echostr,
                                              any_receive_id=True)
            try:
                return UrlCheck(plain.decode("utf-8"))
            except UnicodeDecodeError:
                raise MalformedCallback("the decrypted echostr is not text") from None
        # Instructions are encrypted for the suite id: another suite's are refused.
        message = open_xml_callback(crypto, signed, body)
        suite_id = message.get("SuiteId")
        if suite_id and suite_id != credential.appid:
            raise CallbackRejected("callback names another suite")
        info_type = message.get("InfoType", "")
        if info_type == "suite_ticket":
            value, created_at = message.get("SuiteTicket", ""), _number(message.get("TimeStamp"))
            if not value or created_at is None:
                raise MalformedCallback("suite_ticket message without SuiteTicket or TimeStamp")
            return TicketPushed(PushedTicket(self.platform, credential.appid, value, created_at,
                                             created_at + TICKET_LIFE_S, self.clock()))
        if info_type in ("create_auth", "reset_permanent_code"):
            code = message.get("AuthCode", "")
            if not code:
                raise MalformedCallback(f"{info_type} message without AuthCode")
            # The message names no corp: a redelivery is known by the code
            # its grant remembers.
            return AccountAuthorized(info_type, self._account_of(credential.appid, code), code,
                                     _number(message.get("TimeStamp")))
        if info_type == "change_auth":
            corpid = message.get("AuthCorpId", "")
            if not corpid:
                raise MalformedCallback("change_auth message without AuthCorpId")
            # The permanent code stays valid: nothing to exchange. (What was
            # granted is in get_auth_info, which is not called here.)
            return AccountChanged(info_type, corpid)
        if info_type == "cancel_auth":
            corpid = message.get("AuthCorpId", "")
            if not corpid:
                raise MalformedCallback("cancel_auth message without AuthCorpId")
            # Dated, so that a late redelivery after the corp installed again
            # forgets nothing.
            return AccountRemoved(info_type, corpid, _number(message.get("TimeStamp")))
        return Ignored(info_type or "(no InfoType)")

    def _account_of(self, suite_id: str, code: str) -> str:
        """The corp whose stored grant came from ``code``, or "" (a new code)."""
        if self.grants is None:
            return ""
        digest = code_digest(code)
        for grant in self.grants.list(CORP, suite_id):
            try:
                info = json.loads(grant.info or "{}")
            except ValueError:
                continue
            if isinstance(info, dict) and info.get("code_digest") == digest:
                return grant.account
        return ""

    def reply(self, credential: Credential, text: str) -> CallbackReply:
        return CallbackReply(text)

    def exchange(self, credential: Credential, code: str) -> tuple[AccountGrant, Token]:
        """``get_permanent_code``: the corp's permanent code, what it granted,
        and its first token, for the auth code of an install (pushed as
        create_auth or reset_permanent_code, or on the install redirect)."""
        started = self.clock()
        body = self._with_suite_token(credential.appid, "POST", PERMANENT_CODE_PATH, {"auth_code": code}, [code])
        permanent = body.get("permanent_code")
        corp_info = body.get("auth_corp_info")
        corpid = corp_info.get("corpid") if isinstance(corp_info, dict) else None
        if not isinstance(permanent, str) or not permanent or not isinstance(corpid, str) or not corpid:
            raise UpstreamError(self.platform, "get_permanent_code answer has no permanent_code/auth_corp_info")
        auth_info = body.get("auth_info")
        agents = auth_info.get("agent", []) if isinstance(auth_info, dict) else []
        granted = json.dumps({"auth_corp_info": corp_info, "agent": agents}, ensure_ascii=False, sort_keys=True)
        grant = AccountGrant(CORP, credential.appid, corpid, permanent, granted, started, started)
        if isinstance(body.get("access_token"), str):
            token = self._token(body, "access_token", started)
        else:
            # Answers without the corp's token (the API's later version): ask for it.
            token = self._corp_token(credential.appid, corpid, permanent)
        # The answer carries the permanent code: nothing of it is logged.
        log.info("%s %s: corp %s installed (%d agent(s))", SUITE, credential.appid, corpid, len(agents))
        return grant, token

    def authorization_url(self, credential: Credential, redirect_uri: str, options: Mapping[str, str]) -> str:
        """``get_pre_auth_code``, then the install page, which redirects to
        ``redirect_uri`` with ``auth_code`` (and ``state`` when given)."""
        body = self._with_suite_token(credential.appid, "GET", PRE_AUTH_CODE_PATH, None, [])
        code = body.get("pre_auth_code")
        if not isinstance(code, str) or not code:
            raise UpstreamError(self.platform, "get_pre_auth_code answer has no pre_auth_code", retryable=True)
        query = {"suite_id": credential.appid, "pre_auth_code": code, "redirect_uri": redirect_uri,
                 "state": options.get("state", "")}
        return f"{INSTALL_PAGE}?{urlencode(query)}"


class WeComCorpProvider(AccountTokens, _WeComService):
    missing_account = ("corp {account} has not installed {app} {owner} (or has uninstalled it): "
                       "it must install the suite through its install page")
    platform = CORP
    credential_platform = SUITE
    appid_pattern = r"[A-Za-z0-9_.-]{1,63}:[A-Za-z0-9_.-]{1,64}"
    appid_example = "ww0123456789abcdef:wwfedcba9876543210"

    def appid_error(self, appid: str) -> str | None:
        suite_id, _, corpid = appid.partition(":")
        if not suite_id or not _CORPID.fullmatch(corpid):
            return (f"wecom_corp appid must be <suite_id>:<auth_corpid> (e.g. {self.appid_example}), "
                    f"not {appid!r}")
        return None

    def check_credential(self, appid: str, secret: str) -> None:
        raise BadRequest("wecom_corp tokens come from the corps that install a wecom_suite; add the suite: "
                         "'pighand-token platform add wecom_suite <suite_id> ...'")

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        """``get_corp_token`` with the stored permanent code (the service
        holds this token's lock)."""
        assert self.grants is not None
        suite_id, _, corpid = credential.appid.partition(":")
        grant = self.grants.get(CORP, suite_id, corpid)
        if grant is None:
            raise UpstreamError(self.platform, self.account_error(credential.appid) or "no grant")
        token = self._corp_token(suite_id, corpid, grant.secret)
        if self.grants.get(CORP, suite_id, corpid) is None:
            # Uninstalled (cancel_auth) while the token was asked for: it must
            # not be stored after the corp was forgotten.
            raise UpstreamError(self.platform, self.account_error(credential.appid) or "no grant")
        return token


class WeComProviderTokenProvider(_WeComService):
    platform = PROVIDER
    # The provider API (get_login_info, get_register_code ...) takes
    # ?provider_access_token=.
    token_placement = TokenPlacement(query="provider_access_token")
    appid_pattern = _CORPID.pattern
    appid_example = "ww0123456789abcdef"

    def appid_error(self, appid: str) -> str | None:
        if not _CORPID.fullmatch(appid):
            return f"wecom_provider appid must be the service provider's corpid (e.g. {self.appid_example})"
        return None

    def check_credential(self, appid: str, secret: str) -> None:
        problem = self.appid_error(appid)
        if problem:
            raise BadRequest(problem)
        if not secret or any(c.isspace() for c in secret):
            raise BadRequest("wecom_provider secret must be the provider_secret of the service provider's "
                             "console, without spaces")

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        started = self.clock()
        hidden = [credential.secret]
        _, body = self.request_json("POST", PROVIDER_TOKEN_PATH, secrets=hidden,
                                    json={"corpid": credential.appid, "provider_secret": credential.secret})
        self._check(body, hidden)
        return self._token(body, "provider_access_token", started)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
