"""What a third-party platform pushes to its callback, and what the service
does with it.

A provider opens a callback (signature, decryption, the platform's message
shape) into one of the messages below; :class:`Callbacks` stores what it
carries durably and only then lets the edge answer ``success``. A platform
that does not get its ``success`` delivers the message again, so every step
is idempotent: a redelivered ticket is ignored when a later one is stored, a
redelivered authorization is recognised by its code and not exchanged twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from .audit import Audit
from .domain import AccountGrant, Credential, PushedTicket, Token, TokenKey
from .errors import NotFound, UnknownApp, UpstreamError
from .ports import AccountGrants, Clock, CredentialRepository, TicketStore
from .service import TokenService

log = logging.getLogger(__name__)


# -- messages ------------------------------------------------------------------
@dataclass(frozen=True)
class CallbackRequest:
    """One callback as the edge received it."""

    method: str
    query: Mapping[str, str]
    # Header names in lower case (Feishu signs with X-Lark-* headers).
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class UrlCheck:
    """The platform checks the callback URL: answer ``echo`` as it is."""

    echo: str
    # Feishu wants its challenge back as JSON, DingTalk an encrypted JSON.
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class TicketPushed:
    ticket: PushedTicket


@dataclass(frozen=True)
class AccountAuthorized:
    """An account authorized the app, or changed what it granted: ``code``
    is exchanged at once for the account's grant and token."""

    event: str
    account: str
    code: str = ""  # empty: the platform named the account only (recorded as such)
    # When the platform wrote the message (its clock: WeChat's CreateTime):
    # orders a late redelivery against what came since. None: not known.
    created_at: float | None = None


@dataclass(frozen=True)
class AccountSeen:
    """An account installed the app, or showed up in an event, with no code
    to exchange: it is recorded (``secret``: what the platform handed over
    for it, if anything) and its token is made from the app's own."""

    event: str
    account: str
    secret: str = field(default="", repr=False)
    info: Mapping[str, object] = field(default_factory=dict)
    created_at: float | None = None  # as for AccountAuthorized


@dataclass(frozen=True)
class AccountChanged:
    """An account changed its authorization without handing over a code."""

    event: str
    account: str


@dataclass(frozen=True)
class AccountRemoved:
    event: str
    account: str
    created_at: float | None = None  # as for AccountAuthorized


@dataclass(frozen=True)
class Ignored:
    """An event this service has no use for: acknowledged and logged."""

    event: str


@dataclass(frozen=True)
class Batch:
    """Several messages in one push (DingTalk's sync HTTP push carries a
    list of rows), handled in order and acknowledged together: ``success``
    once every one is stored."""

    messages: tuple[TicketPushed | AccountAuthorized | AccountSeen | AccountChanged | AccountRemoved | Ignored, ...]


CallbackMessage = (UrlCheck | TicketPushed | AccountAuthorized | AccountSeen | AccountChanged | AccountRemoved
                   | Ignored | Batch)


@dataclass(frozen=True)
class CallbackReply:
    body: str
    content_type: str = "text/plain; charset=utf-8"


@runtime_checkable
class CallbackProvider(Protocol):
    """A provider whose platform pushes to a callback (the app's own
    platform: wechat_component, wecom_suite)."""

    platform: str
    # The token platform of the app's accounts (wechat_authorizer, wecom_corp).
    account_platform: str
    # The callback's own secrets besides the app secret, as ``platform add``
    # names its options (callback-token, encoding-aes-key), and those of
    # them that may be empty.
    callback_secrets: tuple[str, ...]
    optional_callback_secrets: tuple[str, ...]

    def seal_secrets(self, secret: str, callback: Mapping[str, str]) -> str:
        """The credential's secret column for the app secret and the
        callback's secrets (named as in ``callback_secrets``)."""

    def open_callback(self, credential: Credential, request: CallbackRequest) -> CallbackMessage:
        """Authenticate and decrypt one callback (CallbackRejected: 401;
        MalformedCallback: 400) and say what it carries."""

    def reply(self, credential: Credential, text: str) -> CallbackReply:
        """The answer the platform expects for ``text`` (``success``)."""

    def exchange(self, credential: Credential, code: str) -> tuple[AccountGrant, Token]:
        """Trade an authorization code for the account's grant and token."""

    def authorization_url(self, credential: Credential, redirect_uri: str, options: Mapping[str, str]) -> str:
        """The page an account authorizes the app on, with a fresh pre-auth code."""


def code_digest(code: str) -> str:
    """What a grant remembers of the code it came from: enough to know a
    redelivery, nothing that could be used."""
    return hashlib.sha256(code.encode()).hexdigest()[:32]


class Callbacks:
    def __init__(self, *, service: TokenService, credentials: CredentialRepository, tickets: TicketStore,
                 grants: AccountGrants, audit: Audit, clock: Clock) -> None:
        self.service = service
        self.credentials = credentials
        self.tickets = tickets
        self.grants = grants
        self.audit = audit
        self.clock = clock

    def handle(self, platform: str, appid: str, request: CallbackRequest, *, request_id: str | None = None,
               remote_addr: str | None = None) -> CallbackReply:
        provider, credential = self._app(platform, appid)
        message = provider.open_callback(credential, request)
        where = dict(platform=platform, appid=appid, request_id=request_id, remote_addr=remote_addr)
        if isinstance(message, UrlCheck):
            return CallbackReply(message.echo, message.content_type)
        for one in message.messages if isinstance(message, Batch) else (message,):
            self._apply(provider, credential, one, where)
        return provider.reply(credential, "success")

    def _apply(self, provider: CallbackProvider, credential: Credential,
               message: TicketPushed | AccountAuthorized | AccountSeen | AccountChanged | AccountRemoved | Ignored,
               where: dict[str, str | None]) -> None:
        platform, appid = credential.platform, credential.appid
        if isinstance(message, TicketPushed):
            self._ticket(message.ticket)
        elif isinstance(message, AccountAuthorized):
            self._authorized(provider, credential, message, where)
        elif isinstance(message, AccountSeen):
            self.record(provider, credential.appid, message, where)
        elif isinstance(message, AccountRemoved):
            self._removed(provider, appid, message, where)
        elif isinstance(message, AccountChanged):
            log.info("%s/%s: %s for account %s (nothing to store)", platform, appid, message.event,
                     message.account)
        else:
            log.info("%s/%s: acknowledged an event this service does not use: %s", platform, appid,
                     message.event)

    def _ticket(self, ticket: PushedTicket) -> None:
        if self.tickets.offer(ticket):
            log.info("%s/%s: stored the ticket pushed at %.0f", ticket.platform, ticket.appid, ticket.created_at)
            # A rest after the platform refused the previous ticket is over:
            # this one is what the app was waiting for.
            self.service.clear_cooldown(TokenKey(ticket.platform, ticket.appid))
        else:
            log.info("%s/%s: a ticket pushed at %.0f arrived after a later one; kept the later one",
                     ticket.platform, ticket.appid, ticket.created_at)

    def _authorized(self, provider: CallbackProvider, credential: Credential, message: AccountAuthorized,
                    where: dict[str, str | None]) -> None:
        stored = self.grants.get(provider.account_platform, credential.appid, message.account)
        if stored is not None and _info(stored).get("code_digest") == code_digest(message.code):
            log.info("%s/%s: %s for %s delivered again; already stored", credential.platform, credential.appid,
                     message.event, message.account)
            return
        if _older(message.created_at, stored):
            # A redelivery of an authorization a later one has replaced: its
            # code is spent (61009), and the stored grant is the newer one.
            log.info("%s/%s: %s for %s written at %.0f arrived after a later one; kept the later one",
                     credential.platform, credential.appid, message.event, message.account, message.created_at)
            return
        try:
            self._exchange(provider, credential, message.code, message.event, where, created_at=message.created_at)
        except UpstreamError as exc:
            if exc.retryable or exc.errcode is None:
                raise  # the platform delivers it again: a later try may work
            # The platform refused the code itself (WeChat 61009 spent, 61010
            # expired; WeCom 40078): a redelivery brings the same code, so
            # failing the callback would only have it sent again and again.
            # Typically an authorization delivered late, after the account
            # was forgotten or authorized anew.
            log.warning("%s/%s: %s for %s: the platform refused its code (%s); acknowledged, nothing stored",
                        credential.platform, credential.appid, message.event, message.account or "a new account",
                        exc.message)
            self.audit.record(f"callback.{message.event}", f"code refused: {exc.errcode}", **where)

    def _exchange(self, provider: CallbackProvider, credential: Credential, code: str, event: str,
                  where: Mapping[str, str | None], *, created_at: float | None = None) -> str:
        """Trade ``code`` for the account's grant and token and store both;
        the account."""
        owner = credential.appid
        # Counted and logged as the app's call: the account is not known yet.
        grant, token = self.service.platform_call(TokenKey(credential.platform, owner),
                                                  lambda: provider.exchange(credential, code))
        stored = self.grants.get(provider.account_platform, owner, grant.account)
        info = {**_info(grant), "code_digest": code_digest(code), "event": event}
        since = _info(stored).get("created_at") if stored is not None else None
        if created_at is None and isinstance(since, int | float):
            # A code the platform did not date (from a redirect) is newer
            # than the push the stored grant came from: keep that bound.
            created_at = since
        if created_at is not None:
            info["created_at"] = created_at
        if stored is not None:
            grant = replace(grant, authorized_at=stored.authorized_at)
        grant = replace(grant, info=json.dumps(info, ensure_ascii=False, sort_keys=True))
        # The grant first: it is the only copy, and the token is made again from it.
        self.grants.save(grant)
        self.service.install(provider.account_platform, grant.token_appid, token)
        self.audit.record(f"callback.{event}", f"account {grant.account} stored", **where)
        return grant.account

    def record(self, provider: CallbackProvider, owner: str, message: AccountSeen,
               where: Mapping[str, str | None]) -> bool:
        """Store an account the platform named without a code to exchange
        (a redelivery, or the same account again, changes nothing but what
        it hands over); whether anything was written."""
        stored = self.grants.get(provider.account_platform, owner, message.account)
        if _older(message.created_at, stored):
            log.info("%s/%s: %s for %s written at %.0f arrived after a later one; kept the later one",
                     provider.platform, owner, message.event, message.account, message.created_at)
            return False
        info: dict[str, object] = {**(_info(stored) if stored is not None else {}), **message.info,
                                   "event": message.event}
        if message.created_at is not None:
            info["created_at"] = message.created_at
        encoded = json.dumps(info, ensure_ascii=False, sort_keys=True)
        if stored is not None and stored.secret == message.secret and stored.info == encoded:
            return False
        now = self.clock()
        self.grants.save(AccountGrant(provider.account_platform, owner, message.account, message.secret, encoded,
                                      stored.authorized_at if stored is not None else now, now))
        if stored is None:
            self.audit.record(f"callback.{message.event}", f"account {message.account} recorded", **where)
        return True

    # -- the authorization helpers (API, behind a key) ------------------------
    def authorization_url(self, platform: str, appid: str, redirect_uri: str,
                          options: Mapping[str, str]) -> str:
        provider, credential = self._app(platform, appid)
        return provider.authorization_url(credential, redirect_uri, options)

    def authorize(self, platform: str, appid: str, code: str, **where: str | None) -> str:
        """Exchange a code an authorization page redirected with (for when
        the platform's push is late or lost); the account it authorized."""
        provider, credential = self._app(platform, appid)
        try:
            return self._exchange(provider, credential, code, "auth_code", {**where, "platform": platform,
                                                                             "appid": appid})
        except UpstreamError:
            # The platform pushes the same code it redirects with: when the
            # push came first, the code is spent (WeChat 61009) and its grant
            # is stored. Looked for only now: it means reading every grant.
            digest = code_digest(code)
            for grant in self.grants.list(provider.account_platform, appid):
                if _info(grant).get("code_digest") == digest:
                    log.info("%s/%s: the code for %s was exchanged already (its push came first)", platform,
                             appid, grant.account)
                    return grant.account
            raise

    def _app(self, platform: str, appid: str) -> tuple[CallbackProvider, Credential]:
        provider = self.service.providers.get(platform)
        if not isinstance(provider, CallbackProvider):
            known = ", ".join(name for name, candidate in self.service.providers.items()
                              if isinstance(candidate, CallbackProvider))
            raise NotFound(f"{platform} is not a third-party platform ({known})")
        credential = self.credentials.get(platform, appid)
        if credential is None:
            raise UnknownApp(platform, appid)
        return provider, credential

    def _removed(self, provider: CallbackProvider, owner: str, message: AccountRemoved,
                 where: dict[str, str | None]) -> None:
        stored = self.grants.get(provider.account_platform, owner, message.account)
        if _older(message.created_at, stored):
            # Delivered again after the account authorized anew: forgetting
            # it now would force a re-authorization nobody asked for.
            log.info("%s/%s: %s for %s written at %.0f arrived after a later authorization; kept the account",
                     provider.platform, owner, message.event, message.account, message.created_at)
            return
        removed = self.grants.remove(provider.account_platform, owner, message.account)
        appid = f"{owner}:{message.account}"
        # Unavailable (503) when a shared tier kept a copy: the platform
        # delivers the removal again, and it is done again.
        self.service.forget(provider.account_platform, appid, everywhere=True)
        for ticket_type in getattr(self.service.providers[provider.account_platform], "ticket_types", ()):
            self.service.forget(f"{provider.account_platform}_{ticket_type}_ticket", appid, everywhere=True)
        self.audit.record(f"callback.{message.event}",
                          f"account {message.account} {'forgotten' if removed else 'was not stored'}", **where)


def _older(created_at: float | None, stored: AccountGrant | None) -> bool:
    """Whether a message written at ``created_at`` predates the message the
    stored grant came from (both on the platform's clock)."""
    if created_at is None or stored is None:
        return False
    since = _info(stored).get("created_at")
    return isinstance(since, int | float) and created_at < since


def _info(grant: AccountGrant) -> dict[str, object]:
    try:
        info = json.loads(grant.info or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}
