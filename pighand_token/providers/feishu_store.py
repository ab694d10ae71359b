"""Feishu / Lark store (marketplace) apps and the tenants that install them
(platform-facts §2.2, §7.4).

- ``feishu_store`` (credential: the app's ``app_id``; App Secret, event
  Encrypt Key, which may be empty, and Verification Token): the
  ``app_access_token``, made from the latest ``app_ticket`` Feishu pushes to
  the event URL every hour. With no valid ticket stored the answer is 503 and
  Feishu is asked to push one (``app_ticket/resend``), at most once a minute
  across the deployment. A ticket is kept 12 hours from its push, as the
  SDKs keep it (Feishu documents no life; its pushes come hourly); one
  Feishu refuses (10012) is retired at once, and the app waits (503) for
  the push asked for then.
- ``feishu_tenant`` (token appid ``<app_id>:<tenant_key>``, served by the
  app's credential): the ``tenant_access_token`` for one installing tenant,
  made with the app token (asked of the service, so it has the whole
  contract: one call, shared, refreshed, replaced when Feishu refuses it).

``lark_store`` / ``lark_tenant`` are the same on open.larksuite.com. Tenants
are recorded from any authenticated event naming one (install events such as
v1 ``app_open`` and v2 ``application.application.visibility.added_v6``
included), and from the first token a caller asks for: callers often learn a
tenant key from a user's event first. v1 ``app_uninstalled`` forgets one.

Both tokens follow the 2 h / 30 min rule of the custom apps' tokens (see
:mod:`.feishu`): refreshed in their last 30 minutes, they are new ones.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.callbacks import (
    AccountRemoved,
    AccountSeen,
    CallbackMessage,
    CallbackReply,
    CallbackRequest,
    Ignored,
    TicketPushed,
    UrlCheck,
)
from ..core.domain import AccountGrant, Credential, PushedTicket, Token
from ..core.errors import BadRequest, MethodRefused, UpstreamError
from ..core.ports import AccountGrants, TokenSource
from .base import HttpProvider, ProviderContext
from .callback_crypto import CallbackRejected, FeishuCrypto, MalformedCallback, json_object
from .feishu import HINTS as FEISHU_HINTS
from .feishu import FeishuProvider
from .third_party import PUSH_REQUEST_WINDOW_S, AwaitingTicket, TicketWait

log = logging.getLogger(__name__)

FEISHU_STORE, FEISHU_TENANT = "feishu_store", "feishu_tenant"
LARK_STORE, LARK_TENANT = "lark_store", "lark_tenant"
STORE_OF = {FEISHU_TENANT: FEISHU_STORE, LARK_TENANT: LARK_STORE}
TENANT_OF = {store: tenant for tenant, store in STORE_OF.items()}

APP_TOKEN_PATH = "/open-apis/auth/v3/app_access_token"
TENANT_TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token"
RESEND_PATH = "/open-apis/auth/v3/app_ticket/resend"

TICKET_LIFE_S = 12 * 3600.0
# A signed push whose X-Lark-Request-Timestamp is further than this from
# our clock is refused as a replay (lark-oapi checks no time at all; Feishu
# signs each delivery when it sends it). Inside the window a replay changes
# nothing: tickets and tenants are ordered by the event's own create time.
REPLAY_WINDOW_S = 300.0

# 10012: Feishu no longer takes the stored app_ticket: retire it, ask for a push now.
TICKET_REFUSED = 10012
# The app token Feishu no longer takes (99991664 app token invalid, 99991671
# access token invalid; platform-facts §2.1): replace it once.
APP_TOKEN_REJECTED = frozenset({99991664, 99991671})
HINTS = {
    **FEISHU_HINTS,
    10012: "the app_ticket is not valid (expired, or from before an App Secret reset)",
    99991664: "the app_access_token is not valid",
}

INSTALL_EVENTS = frozenset({"app_open", "application.application.visibility.added_v6"})
UNINSTALL_EVENTS = frozenset({"app_uninstalled"})
_TENANT_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class StoreSecrets:
    """The App Secret and the event subscription's two secrets."""

    secret: str = field(repr=False)
    encrypt_key: str = field(repr=False)  # "" : Feishu pushes plain events
    verification_token: str = field(repr=False)

    def encode(self) -> str:
        return json.dumps({"secret": self.secret, "encrypt_key": self.encrypt_key,
                           "verification_token": self.verification_token}, sort_keys=True)

    @classmethod
    def parse(cls, stored: str, platform: str) -> StoreSecrets:
        try:
            fields = json.loads(stored)
        except ValueError:
            fields = None
        if (not isinstance(fields, dict) or not all(isinstance(fields.get(name), str) and fields[name]
                                                    for name in ("secret", "verification_token"))
                or not isinstance(fields.get("encrypt_key", ""), str)):
            raise BadRequest(f"a {platform} credential holds the App Secret, the Encrypt Key (may be empty) and "
                             f"the Verification Token: add it with 'pighand-token platform add {platform} "
                             "<app_id> --secret ... --encrypt-key ... --verification-token ...'")
        return cls(fields["secret"], fields.get("encrypt_key", ""), fields["verification_token"])


class _StoreService(FeishuProvider):
    hints = HINTS
    grants: AccountGrants | None = None
    tokens: TokenSource | None = None

    # The Feishu platform name; ``build_lark`` builds the Lark one.
    feishu_platform = ""
    lark_platform = ""

    @classmethod
    def build(cls, ctx: ProviderContext) -> HttpProvider:
        return cls._built(ctx, cls.feishu_platform)

    @classmethod
    def build_lark(cls, ctx: ProviderContext) -> HttpProvider:
        return cls._built(ctx, cls.lark_platform)

    @classmethod
    def _built(cls, ctx: ProviderContext, platform: str) -> _StoreService:
        base = ctx.settings.lark_api_base if platform.startswith("lark") else ctx.settings.feishu_api_base
        provider = cls(session=ctx.session, base_url=base, timeout_s=ctx.settings.upstream_timeout,
                       clock=ctx.clock, platform=platform)
        provider.grants = ctx.account_grants
        provider.tokens = ctx.tokens
        provider._setup(ctx)
        return provider

    def _setup(self, ctx: ProviderContext) -> None:
        """What one provider needs beyond the shared context."""


class FeishuStoreProvider(_StoreService):
    platform = FEISHU_STORE
    account_platform = FEISHU_TENANT
    appid_example = "cli_a1b2c3d4e5f6a7b8"
    callback_secrets: tuple[str, ...] = ("encrypt-key", "verification-token")
    optional_callback_secrets: tuple[str, ...] = ("encrypt-key",)
    wait: TicketWait

    feishu_platform, lark_platform = FEISHU_STORE, LARK_STORE

    def _setup(self, ctx: ProviderContext) -> None:
        self.account_platform = TENANT_OF[self.platform]
        self.wait = TicketWait(self.platform, "app_ticket", ctx.tickets, ctx.locks, ctx.clock, TICKET_LIFE_S)

    # -- the credential ---------------------------------------------------------
    def seal_secrets(self, secret: str, callback: Mapping[str, str]) -> str:
        return StoreSecrets(secret, callback.get("encrypt-key", ""), callback["verification-token"]).encode()

    def check_credential(self, appid: str, secret: str) -> None:
        secrets = StoreSecrets.parse(secret, self.platform)
        if any(c.isspace() for c in secrets.secret + secrets.encrypt_key + secrets.verification_token):
            raise BadRequest(f"{self.platform}: the App Secret, Encrypt Key and Verification Token have no spaces")

    # -- the app token ------------------------------------------------------------
    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        secrets = StoreSecrets.parse(credential.secret, self.platform)

        def ask() -> None:
            self.call(RESEND_PATH, {"app_id": credential.appid, "app_secret": secrets.secret}, [secrets.secret])

        for attempt in (1, 2):
            ticket = self.wait.current(credential.appid, ask)
            started = self.clock()
            hidden = [secrets.secret, ticket.value]
            try:
                body = self.call(APP_TOKEN_PATH, {"app_id": credential.appid, "app_secret": secrets.secret,
                                                  "app_ticket": ticket.value}, hidden)
            except UpstreamError as exc:
                if exc.errcode != TICKET_REFUSED:
                    raise
                # The refused ticket is retired for every worker, which then
                # wait (503) for the push asked for now; that push ends the
                # wait the moment it is stored (a rest would race with it).
                # One pushed meanwhile is tried once.
                self.wait.retire(ticket)
                if attempt == 1 and self.wait.newer(ticket) is not None:
                    continue
                log.warning("%s %s: %s", self.platform, credential.appid, exc.message)
                asked = self.wait.ask(credential.appid, ask, self.clock())
                raise AwaitingTicket(
                    f"{exc.message}; waiting for the next app_ticket push to "
                    f"/callback/{self.platform}/{credential.appid}; {asked}",
                    retry_after_s=PUSH_REQUEST_WINDOW_S) from None
            return self.token_from(body, "app_access_token", started)
        raise AssertionError("unreachable")

    # -- the event callback ---------------------------------------------------------
    def open_callback(self, credential: Credential, request: CallbackRequest) -> CallbackMessage:
        if request.method != "POST":
            raise MethodRefused("Feishu posts its events; this URL takes POST only", ("POST",))
        secrets = StoreSecrets.parse(credential.secret, self.platform)
        outer = json_object(request.body, "callback body")
        sealed = "encrypt" in outer
        if sealed:
            if not secrets.encrypt_key:
                raise CallbackRejected("callback is encrypted but this app has no Encrypt Key (add it with "
                                       "'platform add ... --update --encrypt-key ...')")
            encrypt = outer.get("encrypt")
            if not isinstance(encrypt, str) or not encrypt:
                raise MalformedCallback('callback body has an "encrypt" that is not a string')
            crypto = FeishuCrypto(secrets.encrypt_key)
            event = json_object(crypto.decrypt(encrypt), "decrypted callback")
        elif secrets.encrypt_key:
            # An app with an Encrypt Key gets every event encrypted.
            raise CallbackRejected("callback is not encrypted, but this app has an Encrypt Key")
        else:
            event = outer
        if event.get("type") == "url_verification":
            # Feishu's check of the URL: the token authenticates it (it is
            # not signed; lark-oapi answers it before any signature check).
            self._check_token(event.get("token"), secrets)
            challenge = event.get("challenge")
            if not isinstance(challenge, str):
                raise MalformedCallback("url_verification without a challenge")
            return UrlCheck(json.dumps({"challenge": challenge}), "application/json")
        if sealed:
            self._check_signature(crypto, request)
        if event.get("schema") == "2.0":
            return self._v2(credential, secrets, event, sealed)
        return self._v1(credential, secrets, event, sealed)

    def _check_token(self, token: object, secrets: StoreSecrets, *, signed: bool = False) -> None:
        """The verification token must match; a signed event may leave it
        out (the signature authenticates it, as lark-oapi accepts)."""
        if signed and token is None:
            return
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), secrets.verification_token.encode()):
            raise CallbackRejected("callback verification token does not match")

    def _check_signature(self, crypto: FeishuCrypto, request: CallbackRequest) -> None:
        timestamp = request.headers.get("x-lark-request-timestamp", "")
        nonce = request.headers.get("x-lark-request-nonce", "")
        signature = request.headers.get("x-lark-signature", "")
        if not timestamp or not signature:
            raise CallbackRejected("callback has no X-Lark-Signature / X-Lark-Request-Timestamp")
        crypto.verify(timestamp, nonce, request.body, signature)
        try:
            sent_at = float(timestamp)
        except ValueError:
            raise CallbackRejected("callback X-Lark-Request-Timestamp is not a number") from None
        if abs(self.clock() - sent_at) > REPLAY_WINDOW_S:
            raise CallbackRejected(f"callback was signed more than {REPLAY_WINDOW_S:.0f} s from now (a replay?)")

    def _same_app(self, credential: Credential, app_id: object) -> None:
        if app_id not in (None, "") and app_id != credential.appid:
            raise CallbackRejected("callback names another app")

    def _v1(self, credential: Credential, secrets: StoreSecrets, message: dict[str, Any],
            signed: bool) -> CallbackMessage:
        self._check_token(message.get("token"), secrets, signed=signed)
        event = message.get("event")
        if message.get("type") != "event_callback" or not isinstance(event, dict):
            return Ignored(str(message.get("type") or "(no type)"))
        kind = str(event.get("type") or "(no event type)")
        self._same_app(credential, event.get("app_id"))
        created_at = _seconds(message.get("ts"))
        if kind == "app_ticket":
            value = event.get("app_ticket")
            if not isinstance(value, str) or not value or created_at is None:
                raise MalformedCallback("app_ticket event without app_ticket or ts")
            return self._ticket(credential, value, created_at)
        return self._tenant_event(credential, kind, event.get("tenant_key"), created_at)

    def _v2(self, credential: Credential, secrets: StoreSecrets, message: dict[str, Any],
            signed: bool) -> CallbackMessage:
        header = message.get("header")
        if not isinstance(header, dict):
            raise MalformedCallback("v2 event without a header")
        self._check_token(header.get("token"), secrets, signed=signed)
        self._same_app(credential, header.get("app_id"))
        kind = str(header.get("event_type") or "(no event type)")
        created_ms = _seconds(header.get("create_time"))
        created_at = created_ms / 1000 if created_ms is not None else None
        event = message.get("event")
        if kind == "app_ticket" and isinstance(event, dict):
            value = event.get("app_ticket")
            if not isinstance(value, str) or not value or created_at is None:
                raise MalformedCallback("app_ticket event without app_ticket or create_time")
            return self._ticket(credential, value, created_at)
        return self._tenant_event(credential, kind, header.get("tenant_key"), created_at)

    def _ticket(self, credential: Credential, value: str, created_at: float) -> TicketPushed:
        return TicketPushed(PushedTicket(self.platform, credential.appid, value, created_at,
                                         created_at + TICKET_LIFE_S, self.clock()))

    def _tenant_event(self, credential: Credential, kind: str, tenant_key: object,
                      created_at: float | None) -> CallbackMessage:
        if not isinstance(tenant_key, str) or not tenant_key:
            if kind in INSTALL_EVENTS or kind in UNINSTALL_EVENTS:
                raise MalformedCallback(f"{kind} event without tenant_key")
            return Ignored(kind)
        if tenant_key_error(tenant_key):
            raise MalformedCallback(f"{kind} event with a malformed tenant_key")
        if kind in UNINSTALL_EVENTS:
            return AccountRemoved(kind, tenant_key, created_at)
        if kind in INSTALL_EVENTS:
            return AccountSeen(kind, tenant_key, created_at=created_at)
        # Any other event of a tenant: recorded the first time only (one
        # write per tenant, not one per message).
        if self.grants is not None and self.grants.get(self.account_platform, credential.appid,
                                                       tenant_key) is not None:
            return Ignored(kind)
        return AccountSeen(kind, tenant_key)

    def reply(self, credential: Credential, text: str) -> CallbackReply:
        # What lark-oapi answers an event it handled.
        return CallbackReply(json.dumps({"msg": text}), "application/json")

    def exchange(self, credential: Credential, code: str) -> tuple[AccountGrant, Token]:
        raise BadRequest(f"{self.platform}: tenants install through Feishu's app store; there is no code to "
                         "exchange")

    def authorization_url(self, credential: Credential, redirect_uri: str, options: Mapping[str, str]) -> str:
        raise BadRequest(f"{self.platform}: tenants install the app from Feishu's app store; there is no "
                         "authorization page to send them to")


class FeishuTenantProvider(_StoreService):
    platform = FEISHU_TENANT
    credential_platform: str | None = FEISHU_STORE
    appid_pattern = r"[A-Za-z0-9_.-]{1,63}:[A-Za-z0-9_.-]{1,64}"
    appid_example = "cli_a1b2c3d4e5f6a7b8:2ed263bf32cf1651"

    feishu_platform, lark_platform = FEISHU_TENANT, LARK_TENANT

    def _setup(self, ctx: ProviderContext) -> None:
        self.credential_platform = STORE_OF[self.platform]

    @property
    def store(self) -> str:
        return STORE_OF[self.platform]

    def appid_error(self, appid: str) -> str | None:
        app_id, _, tenant_key = appid.partition(":")
        if not app_id or tenant_key_error(tenant_key):
            return f"{self.platform} appid must be <app_id>:<tenant_key> (e.g. {self.appid_example}), not {appid!r}"
        return None

    def credential_appid(self, appid: str) -> str:
        return appid.partition(":")[0]

    def token_appids(self, appid: str) -> list[str]:
        return [] if self.grants is None else [g.token_appid for g in self.grants.list(self.platform, appid)]

    def check_credential(self, appid: str, secret: str) -> None:
        raise BadRequest(f"{self.platform} tokens come from the tenants that install a {self.store} app; add the "
                         f"app: 'pighand-token platform add {self.store} <app_id> ...'")

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        """``tenant_access_token`` with the app token (the service holds
        this token's lock). A tenant not seen before is recorded once
        Feishu has made a token for it."""
        assert self.tokens is not None
        app_id, _, tenant_key = credential.appid.partition(":")
        app_token = self.tokens.get(self.store, app_id).value
        for attempt in (1, 2):
            started = self.clock()
            try:
                body = self.call(TENANT_TOKEN_PATH, {"app_access_token": app_token, "tenant_key": tenant_key},
                                 [app_token])
            except UpstreamError as exc:
                if attempt == 1 and exc.errcode in APP_TOKEN_REJECTED:
                    log.warning("%s %s: Feishu refused the app token (%s); replacing it", self.store, app_id,
                                exc.errcode)
                    app_token = self.tokens.refresh(self.store, app_id, stale_token=app_token).value
                    continue
                raise
            token = self.token_from(body, "tenant_access_token", started)
            self._remember(app_id, tenant_key, started)
            return token
        raise AssertionError("unreachable")

    def _remember(self, app_id: str, tenant_key: str, now: float) -> None:
        if self.grants is None or self.grants.get(self.platform, app_id, tenant_key) is not None:
            return
        info = json.dumps({"event": "token_request"}, sort_keys=True)
        self.grants.save(AccountGrant(self.platform, app_id, tenant_key, "", info, now, now))
        log.info("%s %s: recorded tenant %s (first seen in a token request)", self.store, app_id, tenant_key)


def tenant_key_error(tenant_key: str) -> bool:
    return not 1 <= len(tenant_key) <= 64 or not set(tenant_key) <= _TENANT_KEY_CHARS


def _seconds(value: object) -> float | None:
    """A number Feishu sends as a string (``ts``, ``create_time``) or a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
