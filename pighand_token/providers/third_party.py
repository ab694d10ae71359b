"""What the third-party (ISV) providers share: the credential of an app
whose platform pushes to a callback, and waiting for a pushed ticket.

Such a credential has three secrets: the app's secret, and the callback's
Token and EncodingAESKey (platform-facts §7.1). They are kept as one JSON
object in the credential's secret column, so they are sealed, rotated and
kept out of listings like every other secret.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..core.domain import PushedTicket
from ..core.errors import AwaitingTicket, BadRequest, Unavailable, UpstreamError
from ..core.ports import AccountGrants, Clock, Locks, TicketStore
from .callback_crypto import MessageCrypto

log = logging.getLogger(__name__)

# Asking the platform to push a ticket now: at most once a minute per app,
# across every worker and instance.
PUSH_REQUEST_WINDOW_S = 60


@dataclass(frozen=True)
class AppSecrets:
    secret: str = field(repr=False)
    callback_token: str = field(repr=False)
    encoding_aes_key: str = field(repr=False)

    def encode(self) -> str:
        return json.dumps({"secret": self.secret, "callback_token": self.callback_token,
                           "encoding_aes_key": self.encoding_aes_key}, sort_keys=True)

    @classmethod
    def parse(cls, stored: str, platform: str, *, key_option: str = "encoding-aes-key",
              key_name: str = "EncodingAESKey") -> AppSecrets:
        """The three secrets of a stored credential, or BadRequest saying
        how to add it (never echoing what was stored). ``key_option`` and
        ``key_name`` name the callback key as the platform and ``platform
        add`` do (DingTalk: ``--aes-key``, aes_key)."""
        try:
            fields = json.loads(stored)
        except ValueError:
            fields = None
        if not isinstance(fields, dict) or not all(
                isinstance(fields.get(name), str) and fields[name]
                for name in ("secret", "callback_token", "encoding_aes_key")):
            raise BadRequest(f"a {platform} credential holds the app secret, the callback token and the "
                             f"{key_name}: add it with 'pighand-token platform add {platform} <appid> "
                             f"--secret ... --callback-token ... --{key_option} ...'")
        return cls(fields["secret"], fields["callback_token"], fields["encoding_aes_key"])

    def crypto(self, receive_id: str, *, setting: str = "EncodingAESKey") -> MessageCrypto:
        return MessageCrypto(self.callback_token, self.encoding_aes_key, receive_id, setting=setting)


class PushedApp:
    """What a provider whose callback is WXBizMsgCrypt-sealed (WeChat Open
    Platform, WeCom) declares to ``platform add``."""

    callback_secrets: tuple[str, ...] = ("callback-token", "encoding-aes-key")
    optional_callback_secrets: tuple[str, ...] = ()

    def seal_secrets(self, secret: str, callback: Mapping[str, str]) -> str:
        return AppSecrets(secret, callback["callback-token"], callback["encoding-aes-key"]).encode()


class AccountTokens:
    """What a token platform of a third-party app's accounts shares
    (wechat_authorizer, wecom_corp, dingtalk_corp, feishu_tenant): appids
    ``<app>:<account>``, served by the app's credential, for the accounts
    whose grants the app holds."""

    platform: str
    grants: AccountGrants | None
    # What an appid whose account holds no grant is told: the account, the
    # app and the app's platform are named ({account}, {owner}, {app}).
    missing_account: str = "{account} has not authorized {app} {owner}"

    def credential_appid(self, appid: str) -> str:
        return appid.partition(":")[0]

    def account_error(self, appid: str) -> str | None:
        owner, _, account = appid.partition(":")
        if self.grants is None or self.grants.get(self.platform, owner, account) is None:
            return self.missing_account.format(account=account, owner=owner,
                                               app=getattr(self, "credential_platform", ""))
        return None

    def token_appids(self, appid: str) -> list[str]:
        return [] if self.grants is None else [g.token_appid for g in self.grants.list(self.platform, appid)]


def check_app_secrets(platform: str, appid: str, stored: str) -> None:
    """Refuse a credential whose callback key cannot be used (BadRequest)."""
    secrets = AppSecrets.parse(stored, platform)
    try:
        secrets.crypto(appid)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


@dataclass
class TicketWait:
    """Finds an app's current pushed ticket, or asks the platform to push one
    (at most once a minute across the deployment) and says it is awaited."""

    platform: str
    ticket_name: str  # component_verify_ticket, suite_ticket
    tickets: TicketStore | None
    # The shared leases (Redis, else SQL): one ask per minute, whichever
    # worker of whichever instance makes it.
    leases: Locks | None
    clock: Clock
    # The life a pushed ticket is given, where the platform may refuse one
    # before its end (retire): a ticket that ended sooner was refused.
    life_s: float | None = None

    def current(self, appid: str, ask: Callable[[], None]) -> PushedTicket:
        ticket = self.tickets.latest(self.platform, appid) if self.tickets is not None else None
        now = self.clock()
        if ticket is not None and ticket.valid(now):
            return ticket
        asked = self.ask(appid, ask, now)
        if ticket is None:
            state = "none has been received"
        elif self.life_s is not None and ticket.expires_at < ticket.created_at + self.life_s:
            state = "the platform refused the last one received"
        else:
            state = "the last one received has expired"
        raise AwaitingTicket(
            f"{self.platform} {appid}: waiting for the platform to push a {self.ticket_name} to "
            f"/callback/{self.platform}/{appid} ({state}); {asked}", retry_after_s=PUSH_REQUEST_WINDOW_S)

    def retire(self, ticket: PushedTicket) -> bool:
        """The platform refused ``ticket``: no worker uses it again, and the
        app waits for the next push (a newer one stored meanwhile stays)."""
        if self.tickets is None:
            return False
        # Ended at its push time where that is earlier than this clock: an
        # instance whose clock runs behind this one's sees it ended too
        # (created_at is the platform's time, which may run ahead of ours).
        retired_at = min(ticket.created_at, self.clock())
        return self.tickets.retire(ticket.platform, ticket.appid, ticket.created_at, retired_at)

    def newer(self, ticket: PushedTicket) -> PushedTicket | None:
        """A valid ticket pushed after ``ticket`` (one the platform refused
        may have been overtaken by a push meanwhile: worth one try)."""
        latest = self.tickets.latest(ticket.platform, ticket.appid) if self.tickets is not None else None
        if latest is not None and latest.created_at > ticket.created_at and latest.valid(self.clock()):
            return latest
        return None

    def ask(self, appid: str, ask: Callable[[], None], now: float) -> str:
        """Call ``ask`` (the platform's push-a-ticket-now API) unless some
        worker did within the minute; what happened, for the caller's message."""
        if self.leases is not None:
            try:
                # A lease, not a counter per clock minute: two asks 0.2 s
                # apart on either side of a minute's end would both pass that.
                claimed = self.leases.claim(f"ticket-push:{self.platform}:{appid}", lease_s=PUSH_REQUEST_WINDOW_S)
            except Unavailable:
                claimed = True
            if not claimed:
                return "the platform was asked to push one less than a minute ago"
        try:
            ask()
        except UpstreamError as exc:
            log.warning("%s %s: asking the platform to push a %s failed: %s", self.platform, appid,
                        self.ticket_name, exc.message)
            return f"asking the platform to push one failed: {exc.message}"
        log.info("%s %s: asked the platform to push a %s", self.platform, appid, self.ticket_name)
        return "the platform was asked to push one now"
