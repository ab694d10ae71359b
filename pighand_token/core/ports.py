"""The small interfaces the service depends on. Adapters implement them;
``bootstrap`` picks which ones."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

from .domain import AccountGrant, AuditEntry, Client, Cooldown, Credential, Grant, PushedTicket, Token, TokenKey

Clock = Callable[[], float]


class CredentialRepository(Protocol):
    def get(self, platform: str, appid: str) -> Credential | None: ...

    def list(self) -> list[Credential]: ...

    def keys(self) -> builtins.list[tuple[str, str]]:
        """(platform, appid) of every credential, without reading secrets."""

    def add(self, credential: Credential, *, update: bool = False) -> None:
        """Insert; raise Conflict if it exists and ``update`` is false."""

    def add_many(self, credentials: Iterable[Credential], *, update: bool = False) -> int:
        """Insert all or none; return how many rows were written."""

    def remove(self, platform: str, appid: str) -> bool: ...


class TokenStore(Protocol):
    """One storage tier for tokens.

    ``shared`` tiers (Redis, SQL) are seen by every worker and instance;
    decisions that must agree across workers read only those.
    """

    name: str
    shared: bool

    def get(self, key: TokenKey) -> Token | None: ...

    def put(self, key: TokenKey, token: Token) -> bool:
        """Store unless the tier holds a token fetched later; True if written."""

    def delete(self, key: TokenKey) -> None: ...


class FallbackStore(TokenStore, Protocol):
    """A shared tier written only while the tiers above it fail (SQL under
    Redis with save_model auto)."""

    def discard_older(self, key: TokenKey, fetched_at: float) -> None:
        """Drop a stored token fetched before ``fetched_at``: once the tiers
        above hold a newer one, a leftover row must never be served."""


class LocalTokenCache(TokenStore, Protocol):
    """A worker's own tier (not shared), told about writes made elsewhere."""

    def drop_older(self, key: TokenKey, fetched_at: float) -> None:
        """A token fetched at ``fetched_at`` was written to a shared tier:
        drop a held token fetched before it, and refuse any such token from
        now on (a read in flight may still bring one)."""

    def clear(self) -> None:
        """Serve no entry until a shared tier confirms it (announcements may
        have been missed), keeping each for :meth:`recall`."""

    def set_aside(self, key: TokenKey, token: Token) -> None:
        """Keep ``token`` for :meth:`recall`: no shared tier took it."""

    def recall(self, key: TokenKey) -> Token | None:
        """The token :meth:`clear` or :meth:`set_aside` set aside for
        ``key`` (once), or None."""


class TokenChanges(Protocol):
    """Follows the tokens written to the shared tiers, by any worker of any
    instance, and keeps this worker's :class:`LocalTokenCache` from serving
    a replaced one. Runs in the background of a served worker only: nothing
    happens before ``start``."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class NoTokenChanges:
    """Nothing to follow (no in-process tier)."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Cooldowns(Protocol):
    """Per-app pause after failed platform calls, seen by every worker."""

    def get(self, key: TokenKey) -> Cooldown | None: ...

    def record(self, key: TokenKey, cooldown: Cooldown) -> None: ...

    def clear(self, key: TokenKey) -> None: ...


class Locks(Protocol):
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> AbstractContextManager[bool]:
        """Hold the named lock across processes; yields False if not acquired
        within ``wait_s``. A crashed holder frees it after ``lease_s``."""

    def claim(self, name: str, *, lease_s: float) -> bool:
        """Take the named lease without waiting and keep it until it expires
        (used so one scheduler tick runs per window across workers)."""


class Provider(Protocol):
    platform: str

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        """Ask the platform for a token.

        ``replacing`` is the token value a forced refresh wants gone; providers
        whose platform returns the same token while it is valid use it to
        decide whether to force a new one. Raises UpstreamError.
        """

    def appid_error(self, appid: str) -> str | None:
        """Why a token appid is malformed for this platform, or None."""

    # The credential row's platform where it is not this one (None).
    credential_platform: str | None

    def account_error(self, appid: str) -> str | None:
        """Why the account ``appid`` names has no token (third-party), or None."""

    def credential_appid(self, appid: str) -> str:
        """The credential row's appid that serves this token appid."""

    def check_credential(self, appid: str, secret: str) -> None:
        """Raise BadRequest for a credential the platform cannot use."""

    def token_appids(self, appid: str) -> list[str]:
        """The token appids one credential serves (for the scheduler)."""


class TicketProvider(Provider, Protocol):
    """A provider whose platform also issues tickets made with the token
    (WeChat jsapi_ticket and the wx_card api_ticket)."""

    ticket_types: tuple[str, ...]
    # errcodes meaning "this token is no longer accepted"
    invalid_token_codes: frozenset[int | str]

    def fetch_ticket(self, access_token: str, ticket_type: str) -> Token: ...


class GrantStore(Protocol):
    """Durable grants: what a platform hands over once for an account that
    authorized an app (Alipay merchants' refresh tokens). Lives in SQL, never
    only in a cache: losing a row means the account must authorize again."""

    def get(self, app_id: str, auth_app_id: str) -> Grant | None: ...

    def list(self, app_id: str) -> builtins.list[Grant]: ...

    def save(self, grant: Grant) -> None:
        """Insert or replace (a new authorization supersedes the stored pair)."""

    def rotate(self, current: Grant, new: Grant) -> bool:
        """Install ``new`` only if the store still holds ``current``'s refresh
        token; False when another writer got there first."""

    def remove(self, app_id: str, auth_app_id: str) -> bool: ...


class TicketStore(Protocol):
    """The tickets platforms push (WeChat component_verify_ticket, WeCom
    suite_ticket), one per app, in SQL: a Redis restart must not leave an
    app without the ticket its token is made from."""

    def latest(self, platform: str, appid: str) -> PushedTicket | None: ...

    def offer(self, ticket: PushedTicket) -> bool:
        """Store ``ticket`` unless one created later is stored (an older
        ticket, redelivered, never replaces a newer one). True when the store
        now holds this ticket (a redelivery of the stored one included)."""

    def retire(self, platform: str, appid: str, created_at: float, at: float) -> bool:
        """The platform refused the stored ticket pushed at ``created_at``
        (DingTalk 853005): it counts as expired from ``at`` for every worker,
        until a newer push replaces it. False when the store holds another
        ticket (a newer one arrived meanwhile) or that one expired already."""


class AccountGrants(Protocol):
    """Durable account grants of third-party apps (refresh tokens,
    permanent codes); see :class:`AccountGrant`."""

    def get(self, platform: str, owner: str, account: str) -> AccountGrant | None: ...

    def list(self, platform: str, owner: str) -> builtins.list[AccountGrant]: ...

    def save(self, grant: AccountGrant) -> None:
        """Insert or replace (a new authorization supersedes the stored one)."""

    def rotate(self, current: AccountGrant, new: AccountGrant) -> bool:
        """Install ``new`` only if the store still holds ``current``'s secret;
        False when another writer got there first."""

    def remove(self, platform: str, owner: str, account: str) -> bool: ...


class TokenSource(Protocol):
    """The service as a provider sees it: a token made from another
    managed token (an authorizer's from its component's) asks for that one
    here, with the whole contract (tiers, single flight, cooldowns)."""

    def get(self, platform: str, appid: str) -> Token: ...

    def refresh(self, platform: str, appid: str, *, stale_token: str | None = None,
                caller: str | None = None) -> Token: ...


class Counters(Protocol):
    def hit(self, name: str, *, limit: int, window_start: float, window_end: float, now: float) -> float | None:
        """Count one event in the fixed window [window_start, window_end),
        unless it already holds ``limit``: then count nothing and return the
        seconds until the window ends. Shared by every worker."""


class ClientRepository(Protocol):
    def list(self) -> list[Client]: ...

    def add(self, client: Client) -> None: ...

    def remove(self, name: str) -> bool: ...

    def touch(self, name: str, at: float) -> None: ...


class AuditLog(Protocol):
    def record(self, entry: AuditEntry) -> None: ...

    def tail(self, count: int) -> list[AuditEntry]: ...


class Metrics(Protocol):
    """What the service counts; implementations must do no I/O (they sit on
    the hot path)."""

    def token_lookup(self, platform: str, tier: str) -> None:
        """A token was answered from ``tier``: redis, memory, sql or platform."""

    def platform_call(self, platform: str, outcome: str, errcode: str, seconds: float) -> None:
        """One call to a platform: outcome ok, error or timeout."""

    def refresh(self, platform: str, seconds: float) -> None:
        """A fetch from the platform, retries included, took ``seconds``."""

    def lock_wait(self, seconds: float) -> None: ...

    def scheduler_tick(self, outcome: str, failures: int = 0) -> None:
        """outcome: ran, skipped (another worker has this interval) or error."""


class NoMetrics:
    def token_lookup(self, platform: str, tier: str) -> None:
        pass

    def platform_call(self, platform: str, outcome: str, errcode: str, seconds: float) -> None:
        pass

    def refresh(self, platform: str, seconds: float) -> None:
        pass

    def lock_wait(self, seconds: float) -> None:
        pass

    def scheduler_tick(self, outcome: str, failures: int = 0) -> None:
        pass
