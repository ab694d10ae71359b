"""WeChat Open Platform third-party platforms ("components") and the
accounts that authorize them (platform-facts §7.2).

- ``wechat_component`` (credential: component appid; secret, callback Token
  and EncodingAESKey): the ``component_access_token``, made from the
  ``component_verify_ticket`` WeChat pushes to the callback every 10 minutes
  (life 12 h). With no valid ticket stored, the token cannot be made: the
  answer is 503 and WeChat is asked to push one (``api_start_push_ticket``).
- ``wechat_authorizer`` (token appid ``<component_appid>:<authorizer_appid>``,
  served by the component's credential): the ``authorizer_access_token``,
  made with the component token from the authorizer's refresh token. The
  refresh token is the only thing that survives for an authorizer; WeChat
  may hand back a new one with each token, and then refuses the old one
  (61023). So the new one is installed by compare-and-set before the token
  is served, under the token's lock.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from ..core.callbacks import (
    AccountAuthorized,
    AccountRemoved,
    CallbackMessage,
    CallbackReply,
    CallbackRequest,
    Ignored,
    TicketPushed,
)
from ..core.domain import AccountGrant, Credential, PushedTicket, Token
from ..core.errors import BadRequest, MethodRefused, Unavailable, UpstreamError
from ..core.ports import AccountGrants, TokenSource
from .base import HttpProvider, ProviderContext, TokenPlacement
from .callback_crypto import SignedQuery, open_xml_callback
from .third_party import (
    PUSH_REQUEST_WINDOW_S,
    AccountTokens,
    AppSecrets,
    AwaitingTicket,
    PushedApp,
    TicketWait,
    check_app_secrets,
)
from .wechat import WeChatProvider

COMPONENT = "wechat_component"
AUTHORIZER = "wechat_authorizer"
TICKET_LIFE_S = 12 * 3600.0
LOGIN_PAGE = "https://mp.weixin.qq.com/cgi-bin/componentloginpage"
AUTH_TYPES = ("1", "2", "3")
# 61005 / 61006: WeChat no longer takes the stored ticket (expired on its
# side, or pushed before the secret was reset): it is retired, and as the
# next push may be 10 minutes away, one is asked for now, as when none is
# stored.
TICKET_REFUSED = (61005, 61006)
# 61023: the refresh token is no longer valid: the account must authorize
# the component again; retrying cannot help.
REFRESH_TOKEN_INVALID = 61023
# Storing a rotated refresh token: tries, and the first pause between them.
ROTATE_TRIES = 4
ROTATE_PAUSE_S = 0.25

log = logging.getLogger(__name__)
COMPONENT_HINTS = {
    61005: "the component_verify_ticket has expired; waiting for WeChat to push a new one",
    61006: "the component_verify_ticket is not valid (another deployment's, or from before a secret change)",
    61023: "the authorizer's refresh token is no longer valid: the account must authorize the component again",
}


class _WeChatThirdParty(WeChatProvider):
    """WeChat's error handling and tickets, with the third-party context."""

    def _setup(self, ctx: ProviderContext) -> None:
        self.grants: AccountGrants | None = ctx.account_grants
        self.tokens: TokenSource | None = ctx.tokens

    def _component_token(self, component_appid: str) -> str:
        assert self.tokens is not None
        return self.tokens.get(COMPONENT, component_appid).value

    def _call_with_component_token(self, component_appid: str, path: str, payload: dict[str, Any],
                                   secrets: list[str]) -> dict[str, Any]:
        """POST ``path`` with the component token; when WeChat no longer
        takes that token (40001/42001), replace it the way a caller's PUT
        would (one refresh however many callers saw it) and try once more."""
        assert self.tokens is not None
        token = self._component_token(component_appid)
        for attempt in (1, 2):
            _, body = self.request_json("POST", path, secrets=[token, *secrets],
                                        params={"component_access_token": token}, json=payload)
            errcode = body.get("errcode")
            if isinstance(errcode, int) and errcode != 0:
                if errcode in self.invalid_token_codes and attempt == 1:
                    token = self.tokens.refresh(COMPONENT, component_appid, stale_token=token).value
                    continue
                raise self._third_party_error(errcode, str(body.get("errmsg", "")), [token, *secrets])
            return body
        raise AssertionError("unreachable")

    def _third_party_error(self, errcode: int, errmsg: str, secrets: list[str]) -> UpstreamError:
        hint = COMPONENT_HINTS.get(errcode)
        error = self._error(errcode, errmsg, secrets)
        if hint:
            return UpstreamError(self.platform, f"{hint} ({error.platform_message})", errcode=errcode)
        return error


class WeChatComponentProvider(PushedApp, _WeChatThirdParty):
    platform = COMPONENT
    account_platform = AUTHORIZER
    # The component API (api_query_auth, api_authorizer_token ...) takes
    # ?component_access_token=; an authorizer's calls take ?access_token=.
    token_placement = TokenPlacement(query="component_access_token")
    ticket_types: tuple[str, ...] = ()
    appid_example = "wx0123456789abcdef"
    wait: TicketWait

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        provider = cls(session=ctx.session, base_url=ctx.settings.wechat_api_base,
                       timeout_s=ctx.settings.upstream_timeout, clock=ctx.clock, platform=COMPONENT)
        provider._setup(ctx)
        provider.wait = TicketWait(COMPONENT, "component_verify_ticket", ctx.tickets, ctx.locks, ctx.clock,
                                   TICKET_LIFE_S)
        return provider

    def check_credential(self, appid: str, secret: str) -> None:
        check_app_secrets(self.platform, appid, secret)

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        secrets = AppSecrets.parse(credential.secret, self.platform)

        def ask() -> None:
            self._ask_for_ticket(credential.appid, secrets)

        for attempt in (1, 2):
            ticket = self.wait.current(credential.appid, ask)
            started = self.clock()
            _, body = self.request_json(
                "POST", "/cgi-bin/component/api_component_token", secrets=[secrets.secret, ticket.value],
                json={"component_appid": credential.appid, "component_appsecret": secrets.secret,
                      "component_verify_ticket": ticket.value})
            errcode = body.get("errcode")
            if not isinstance(errcode, int) or errcode == 0:
                return _token(self.platform, body, "component_access_token", started)
            error = self._third_party_error(errcode, str(body.get("errmsg", "")), [secrets.secret, ticket.value])
            if errcode not in TICKET_REFUSED:
                raise error
            # The refused ticket is retired for every worker: none calls
            # WeChat with it again, and the next push (asked for now) ends
            # the wait at once, whenever it lands. A rest (cooldown) would
            # race with that push and could outlast it.
            self.wait.retire(ticket)
            log.warning("%s %s: %s", self.platform, credential.appid, error.message)
            if attempt == 2:
                break
            try:
                self.wait.current(credential.appid, ask)  # a newer ticket stored meanwhile: tried once
            except AwaitingTicket as exc:
                raise AwaitingTicket(f"{error.message}; {exc.message}", retry_after_s=PUSH_REQUEST_WINDOW_S) from None
        raise AwaitingTicket(f"{self.platform} {credential.appid}: WeChat refused the newest ticket too; waiting "
                             "for the next push", retry_after_s=PUSH_REQUEST_WINDOW_S)

    def _ask_for_ticket(self, appid: str, secrets: AppSecrets) -> None:
        _, body = self.request_json("POST", "/cgi-bin/component/api_start_push_ticket", secrets=[secrets.secret],
                                    json={"component_appid": appid, "component_secret": secrets.secret})
        errcode = body.get("errcode")
        if isinstance(errcode, int) and errcode != 0:
            raise self._third_party_error(errcode, str(body.get("errmsg", "")), [secrets.secret])

    # -- the callback ------------------------------------------------------------
    def open_callback(self, credential: Credential, request: CallbackRequest) -> CallbackMessage:
        method, query, body = request.method, request.query, request.body
        if method != "POST":
            raise MethodRefused("WeChat posts its authorization events; this URL takes POST only", ("POST",))
        secrets = AppSecrets.parse(credential.secret, self.platform)
        message = open_xml_callback(secrets.crypto(credential.appid), SignedQuery.from_wechat(query), body)
        info_type = message.get("InfoType", "")
        if info_type == "component_verify_ticket":
            value = message.get("ComponentVerifyTicket", "")
            created_at = _number(message.get("CreateTime"))
            if not value or created_at is None:
                raise BadRequest("component_verify_ticket message without ComponentVerifyTicket or CreateTime")
            return TicketPushed(PushedTicket(self.platform, credential.appid, value, created_at,
                                             created_at + TICKET_LIFE_S, self.clock()))
        if info_type in ("authorized", "updateauthorized"):
            account, code = message.get("AuthorizerAppid", ""), message.get("AuthorizationCode", "")
            if not account or not code:
                raise BadRequest(f"{info_type} message without AuthorizerAppid or AuthorizationCode")
            return AccountAuthorized(info_type, account, code, _number(message.get("CreateTime")))
        if info_type == "unauthorized":
            account = message.get("AuthorizerAppid", "")
            if not account:
                raise BadRequest("unauthorized message without AuthorizerAppid")
            return AccountRemoved(info_type, account, _number(message.get("CreateTime")))
        return Ignored(info_type or "(no InfoType)")

    def reply(self, credential: Credential, text: str) -> CallbackReply:
        return CallbackReply(text)

    def exchange(self, credential: Credential, code: str) -> tuple[AccountGrant, Token]:
        """``api_query_auth``: the authorizer's token and refresh token for
        the code WeChat pushed (or the authorization page redirected with)."""
        started = self.clock()
        body = self._call_with_component_token(
            credential.appid, "/cgi-bin/component/api_query_auth",
            {"component_appid": credential.appid, "authorization_code": code}, [code])
        info = body.get("authorization_info")
        if not isinstance(info, dict):
            raise UpstreamError(self.platform, "api_query_auth answer has no authorization_info", retryable=True)
        account = info.get("authorizer_appid")
        refresh = info.get("authorizer_refresh_token")
        if not isinstance(account, str) or not account or not isinstance(refresh, str) or not refresh:
            raise UpstreamError(self.platform, "api_query_auth answer has no authorizer_appid/refresh token")
        token = _token(self.platform, info, "authorizer_access_token", started)
        granted = json.dumps({"func_info": info.get("func_info", [])}, ensure_ascii=False, sort_keys=True)
        grant = AccountGrant(AUTHORIZER, credential.appid, account, refresh, granted, started, started)
        return grant, token

    def authorization_url(self, credential: Credential, redirect_uri: str, options: Mapping[str, str]) -> str:
        """``api_create_preauthcode``, then the component login page that
        redirects to ``redirect_uri`` with ``auth_code``. ``auth_type``
        (1 official accounts, 2 mini programs, 3 both) and ``biz_appid``
        are passed on when given."""
        if options.get("auth_type") and options["auth_type"] not in AUTH_TYPES:
            raise BadRequest("auth_type must be 1 (official accounts), 2 (mini programs) or 3 (both)")
        body = self._call_with_component_token(credential.appid, "/cgi-bin/component/api_create_preauthcode",
                                               {"component_appid": credential.appid}, [])
        code = body.get("pre_auth_code")
        if not isinstance(code, str) or not code:
            raise UpstreamError(self.platform, "api_create_preauthcode answer has no pre_auth_code", retryable=True)
        query = {"component_appid": credential.appid, "pre_auth_code": code, "redirect_uri": redirect_uri}
        query.update({name: options[name] for name in ("auth_type", "biz_appid") if options.get(name)})
        return f"{LOGIN_PAGE}?{urlencode(query)}"


class WeChatAuthorizerProvider(AccountTokens, _WeChatThirdParty):
    missing_account = ("{account} has not authorized {app} {owner} (or has revoked it): it must authorize through "
                       "the component's authorization page")
    platform = AUTHORIZER
    credential_platform = COMPONENT
    appid_pattern = r"[A-Za-z0-9_.-]{1,63}:[A-Za-z0-9_.-]{1,64}"
    appid_example = "wx0123456789abcdef:wxfedcba9876543210"

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        provider = cls(session=ctx.session, base_url=ctx.settings.wechat_api_base,
                       timeout_s=ctx.settings.upstream_timeout, clock=ctx.clock, platform=AUTHORIZER)
        provider._setup(ctx)
        return provider

    def appid_error(self, appid: str) -> str | None:
        component, _, account = appid.partition(":")
        if not component or not account or ":" in account:
            return (f"wechat_authorizer appid must be <component_appid>:<authorizer_appid> "
                    f"(e.g. {self.appid_example}), not {appid!r}")
        return None

    def check_credential(self, appid: str, secret: str) -> None:
        raise BadRequest("wechat_authorizer tokens come from the accounts that authorize a wechat_component; "
                         "add the component: 'pighand-token platform add wechat_component <component_appid> ...'")

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        """``api_authorizer_token`` with the stored refresh token. The
        service holds this token's lock, so one worker of one instance uses
        a refresh token at a time."""
        assert self.grants is not None
        component, _, account = credential.appid.partition(":")
        grant = self.grants.get(AUTHORIZER, component, account)
        if grant is None:
            raise UpstreamError(self.platform, self.account_error(credential.appid) or "no grant")
        started = self.clock()
        body = self._call_with_component_token(
            component, "/cgi-bin/component/api_authorizer_token",
            {"component_appid": component, "authorizer_appid": account,
             "authorizer_refresh_token": grant.secret}, [grant.secret])
        token = _token(self.platform, body, "authorizer_access_token", started)
        refresh = body.get("authorizer_refresh_token")
        if isinstance(refresh, str) and refresh and refresh != grant.secret:
            # WeChat now refuses the old one: keep the new one before the
            # token goes anywhere.
            new = AccountGrant(grant.platform, grant.owner, grant.account, refresh, grant.info,
                               grant.authorized_at, started)
            if not self._rotate(grant, new):
                # The account authorized again meanwhile: its new grant (and
                # the token installed with it) is the one to keep.
                raise UpstreamError(self.platform, f"{account} authorized again while its token was refreshed; "
                                    "ask again", retryable=True)
        elif self.grants.get(AUTHORIZER, component, account) is None:
            # The account left (unauthorized) while its token was refreshed:
            # the token must not be stored after it was forgotten.
            raise UpstreamError(self.platform, self.account_error(credential.appid) or "no grant")
        return token

    def _rotate(self, grant: AccountGrant, new: AccountGrant) -> bool:
        """Store the refresh token WeChat just replaced ``grant``'s with.
        WeChat no longer takes the old one, so a store that does not answer
        is asked again a few times (still under the token's lock) before the
        new one is given up, which would mean a re-authorization."""
        for attempt in range(ROTATE_TRIES):
            try:
                return self.grants.rotate(grant, new) if self.grants is not None else False
            except Unavailable as exc:
                if attempt == ROTATE_TRIES - 1:
                    log.error("%s %s: the refresh token WeChat rotated could not be stored (%s); the account "
                              "may have to authorize again", self.platform, grant.token_appid, exc.message)
                    raise
                time.sleep(ROTATE_PAUSE_S * 2 ** attempt)
        return False


def _token(platform: str, body: Mapping[str, Any], name: str, started: float) -> Token:
    value = body.get(name)
    expires_in = body.get("expires_in")
    if not isinstance(value, str) or not value or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise UpstreamError(platform, f"answer has no {name}/expires_in", retryable=True)
    return Token(value=value, expires_at=started + float(expires_in), fetched_at=started)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
