"""TokenService: the use cases. Everything that decides lives here; the HTTP
blueprint, the CLI and the scheduler only call it.

Lookup: the tiers in order (in-process > Redis > SQL, as bootstrap chose),
back-filling the tiers above the one that answered. A miss takes the
per-token lock (threads of this process first, then the cross-process lock),
reads the shared tiers again, and only then calls the platform, so every
worker and instance together make one call per token.

Faults: a tier that fails is skipped (one warning per interval); a token
inside its margin is still served, until its real expiry, while a refresh is
under way or failing; after a failed call the app rests for a cooldown that
doubles per failure, shared by every worker.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TypeVar

from .domain import Cooldown, Credential, Token, TokenKey, valid_appid
from .errors import (
    AwaitingTicket,
    BadRequest,
    NotFound,
    PighandError,
    RateLimited,
    Unavailable,
    UnknownApp,
    UnknownPlatform,
    UpstreamError,
    UpstreamTimeout,
)
from .ports import (
    Clock,
    Cooldowns,
    Counters,
    CredentialRepository,
    FallbackStore,
    LocalTokenCache,
    Locks,
    Metrics,
    NoMetrics,
    Provider,
    TicketProvider,
    TokenStore,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

# Which tier answered the current request's lookup (for the request log).
ANSWERED_BY: ContextVar[str | None] = ContextVar("answered_by", default=None)

MAX_COOLDOWN_S = 300.0
# An app with nothing left to serve, failing for a transient reason (5xx,
# timeouts, busy): one probing call this often at most, so the first good
# token comes within this long of the platform's recovery, at 4 calls a
# minute (quota) while it is down.
OUTAGE_PROBE_S = 15.0


@dataclass(frozen=True)
class Policy:
    margin_s: float = 300.0
    """How early a token counts as expired (``corn_interval``); capped at
    half the token's reported life."""
    upstream_timeout_s: float = 5.0
    retry_attempts: int = 3
    retry_base_s: float = 0.2
    cooldown_base_s: float = 5.0
    """First pause after a failed call; doubles per failure up to 5 minutes."""
    refresh_limit_per_minute: int = 10
    """Refreshes that reach the platform, per caller and app."""
    refresh_rate_limit: int = 20
    """Scheduled refreshes started per second at most (one tick runs at a
    time across the deployment, so this is the deployment's rate)."""

    @property
    def upstream_budget_s(self) -> float:
        """Longest a refresh may spend calling the platform, retries included."""
        return 2 * self.upstream_timeout_s + 1.0

    @property
    def lock_lease_s(self) -> float:
        # Longer than any refresh can take, so a live holder never loses it;
        # a crashed holder's lock frees itself after this.
        return self.upstream_budget_s + 5.0

    @property
    def lock_wait_s(self) -> float:
        return self.upstream_budget_s + 1.0

    def cooldown_s(self, failures: int, pause_hint_s: float | None = None) -> float:
        doubled = self.cooldown_base_s * 2 ** max(0, failures - 1)
        return min(MAX_COOLDOWN_S, max(doubled, pause_hint_s or 0.0))


@dataclass
class _Flight:
    """One token's in-process lock and the threads holding or awaiting it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


@dataclass
class RefreshReport:
    refreshed: list[TokenKey] = field(default_factory=list)
    fresh: list[TokenKey] = field(default_factory=list)
    failed: dict[TokenKey, PighandError] = field(default_factory=dict)
    # Due, but not reached before the tick's window closed: the latest to
    # enter their margin, left to the next tick.
    deferred: list[TokenKey] = field(default_factory=list)


@dataclass(frozen=True)
class TokenStatus:
    """What the status page and ``token status`` show for one token.

    ``state``: valid, inside margin (still valid, being refreshed), failing
    (the last call failed and nothing valid is stored), expired, missing.
    Never the token or the secret.
    """

    platform: str
    appid: str
    state: str
    expires_in_s: float | None
    last_refresh_at: float | None
    last_error: str | None
    errcode: int | str | None
    egress_ip: str | None
    retry_in_s: float | None


# The caller IP a platform names in an IP-whitelist error (WeChat 40164,
# WeCom 60020), for the operator to add to the whitelist.
_REPORTED_IP = re.compile(r"\bip[:\s]+((?:\d{1,3}\.){3}\d{1,3}|[0-9a-fA-F]*:[0-9a-fA-F:.]+)", re.I)


class _Pace:
    """When each of ``count`` due refreshes may start: at most ``rate`` in
    any second, spread evenly from ``start`` to ``closes_at`` when there
    are more than ``rate`` of them, and never
    after ``not_after`` (when the token enters its margin) if the rate allows.

    The platform sees a call a little after its refresh starts (a lock, a
    grant read), by a varying delay, so starts are held to ``rate`` per
    ``1 + 1/rate`` seconds: a twentieth of a second of slack at 20/s, and
    19 calls a second on average.
    """

    def __init__(self, rate: int, *, start: float, count: int, closes_at: float) -> None:
        self.rate = max(1, rate)
        self.window_s = 1.0 + 1.0 / self.rate
        self.start = start
        self.closes_at = closes_at
        # A set the rate covers within a second goes at once: spreading it
        # would only bring every token nearer its margin, and the ticks
        # of a deployment further from one call per token per interval.
        self._step = max(0.0, closes_at - start) / count if count > self.rate else 0.0
        self._recent: deque[float] = deque(maxlen=self.rate)  # the latest starts

    def turn(self, index: int, *, not_after: float) -> float:
        turn = min(self.start + index * self._step, not_after)
        if self._recent:
            turn = max(turn, self._recent[-1] + self.window_s / self.rate)
            if len(self._recent) == self.rate:
                # Rounding aside, the even spacing already holds it; this
                # makes sure.
                turn = max(turn, self._recent[0] + self.window_s)
        return turn

    def started(self, at: float) -> None:
        self._recent.append(at)


@dataclass
class _Found:
    servable: Token | None = None
    # Inside its margin but not yet expired: served only when refreshing fails.
    usable: Token | None = None


class TokenService:
    def __init__(self, *, credentials: CredentialRepository, stores: Sequence[TokenStore], locks: Locks,
                 providers: Mapping[str, Provider], cooldowns: Cooldowns, fallback: FallbackStore | None = None,
                 counters: Counters | None = None, metrics: Metrics | None = None, clock: Clock = time.time,
                 policy: Policy | None = None, sleep: Callable[[float], None] = time.sleep,
                 local: LocalTokenCache | None = None) -> None:
        if not any(s.shared for s in stores) and fallback is None:
            raise ValueError("at least one shared token store is required")
        self.credentials = credentials
        # The worker's own tier (also in ``stores``): what it set aside when
        # it lost track of the shared tiers goes back to them (recall).
        self.local = local
        self.stores = list(stores)
        self.fallback = fallback
        self._read_order: list[TokenStore] = self.stores + ([fallback] if fallback is not None else [])
        self._shared: list[TokenStore] = [s for s in self._read_order if s.shared]
        self.locks = locks
        self.providers = dict(providers)
        # Credential platform -> the platforms whose tokens its rows serve.
        self._served_by: dict[str, list[str]] = {}
        for name, provider in sorted(self.providers.items()):
            self._served_by.setdefault(provider.credential_platform or name, []).append(name)
        self.cooldowns = cooldowns
        self.counters = counters
        self.metrics: Metrics = metrics or NoMetrics()
        self.clock = clock
        self.policy = policy or Policy()
        self._sleep = sleep
        # Per token: its lock and how many threads hold or wait for it; the
        # entry goes when the last leaves, so appids asked once (unknown
        # ones included) leave nothing behind.
        self._flights: dict[TokenKey, _Flight] = {}
        self._flights_mutex = threading.Lock()
        self._warned_at: dict[str, float] = {}

    # -- queries -----------------------------------------------------------
    def platforms(self) -> list[str]:
        return sorted(self.providers)

    def key(self, platform: str, appid: str) -> TokenKey:
        """Validate a (platform, appid) pair from outside."""
        provider = self.providers.get(platform)
        if provider is None:
            raise UnknownPlatform(platform, self.platforms())
        if not valid_appid(appid):
            raise BadRequest("appid must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        problem = provider.appid_error(appid)
        if problem:
            raise BadRequest(problem)
        return TokenKey(platform, appid)

    def get(self, platform: str, appid: str) -> Token:
        """A token good for at least the margin: from the first tier that has
        one, else from the platform (one call across all workers)."""
        key = self.key(platform, appid)
        return self._obtain(key, lambda: self._fetch_and_store(key), known=lambda: self._credential(key))

    def cached(self, key: TokenKey) -> Token | None:
        """The token if the first tier (the worker's memory, kept coherent by
        the token-change follower) can serve it as it is, else None: the hot
        path answers only this case and leaves everything else (back-fills,
        refreshes, errors) to get()."""
        store = self._read_order[0]
        try:
            token = store.get(key)
        except Unavailable:
            return None
        if token is None or not token.servable(self.clock(), self.policy.margin_s):
            return None
        self._answered(key, store.name)
        return token

    def expires_in(self, token: Token) -> int:
        """Whole seconds this service will keep serving ``token`` (a token or
        a ticket it answered): until its expiry less the margin, never negative.
        A token served inside its margin (refresh under way or failing) says 0."""
        return token.expires_in(self.clock(), self.policy.margin_s)

    def get_ticket(self, platform: str, appid: str, ticket_type: str) -> Token:
        """A platform ticket made with the managed token (WeChat jsapi /
        wx_card), cached with its own expiry and margin like a token."""
        key = self.key(platform, appid)
        provider = self.providers[platform]
        types: tuple[str, ...] = getattr(provider, "ticket_types", ())
        if ticket_type not in types:
            supported = f"supported types: {', '.join(types)}" if types else f"{platform} has no tickets"
            raise NotFound(f"unknown ticket type {ticket_type!r}; {supported}")
        ticket_key = TokenKey(f"{platform}_{ticket_type}_ticket", appid)
        return self._obtain(ticket_key, lambda: self._fetch_ticket(key, ticket_key, ticket_type),
                            known=lambda: self._credential(key))

    def _obtain(self, key: TokenKey, fetch: Callable[[], Token], known: Callable[[], object]) -> Token:
        """``key``'s servable token, else ``fetch()`` under its lock; ``known()``
        raises UnknownApp before any lock is taken (an invented appid costs
        one read and writes nothing)."""
        found = self._read(key)
        if found.servable is not None:
            return found.servable
        usable = found.usable
        if usable is None:
            known()
            recalled = self._recall(key)
            if recalled is not None:
                return recalled

        def work() -> Token:
            # Whoever held the lock before us may have fetched it already.
            again = self._read(key).servable
            return again if again is not None else fetch()

        if usable is None:
            return self._locked(key, work)
        # The token is inside its margin but still valid: refresh it, but if
        # another worker is already doing so, or the platform fails, keep
        # serving it rather than making callers wait or fail.
        try:
            return self._locked(key, work, on_busy=lambda: usable)
        except (UpstreamError, Unavailable) as exc:
            log.warning("refresh of %s failed (%s); serving the current token inside its margin, "
                        "%.0f s before it expires", key, exc.message, usable.expires_at - self.clock())
            return usable

    # -- commands ----------------------------------------------------------
    def refresh(self, platform: str, appid: str, *, stale_token: str | None = None,
                caller: str | None = None) -> Token:
        """Replace the token with a new one from the platform.

        With ``stale_token`` (the token a caller found rejected): if the shared
        store already holds a different, servable token, that one is the
        answer and the platform is not called. Decided under the lock, from
        the shared tiers only, so concurrent PUTs coalesce into one call.

        ``caller`` (an API client) is held to ``refresh_limit_per_minute``
        refreshes per app that reach the platform; coalesced ones are free.
        """
        key = self.key(platform, appid)
        requested_at = self.clock()
        # An unknown app is 404 before it takes a lock or a counter row.
        credential = self._credential(key)

        def work() -> Token:
            current = self._read_shared(key)
            if current is not None:
                answer_current = (current.value != stale_token if stale_token is not None
                                  # Another refresh finished while this one waited.
                                  else current.fetched_at >= requested_at)
                if answer_current:
                    # Write it back: a tier above may still hold the token the
                    # caller found stale (Redis back from an outage with old
                    # data, this worker's memory).
                    self._write(key, current)
                    return current
            replacing = stale_token if stale_token is not None else (current.value if current else None)
            if caller is not None:
                self._spend_refresh_budget(caller, key)
            return self._fetch_and_store(key, replacing=replacing, credential=credential)

        # Waited out (the holder may have died mid-refresh): never answer the
        # very token the caller reported stale.
        return self._locked(key, work, on_timeout=lambda: self._waited_too_long(key, not_this=stale_token))

    def refresh_due(self, *, spread_s: float = 0.0) -> RefreshReport:
        """Refresh every credential whose token is missing or would enter its
        margin before the next tick (one ``margin_s`` from now).

        Soonest first: missing tokens and tokens already inside their margin,
        then by the time each enters its margin. At most
        ``refresh_rate_limit`` refreshes start in any second. With
        ``spread_s`` (the scheduler's tick) the due set is spread evenly
        over that many seconds, but no token's turn comes after it enters
        its margin; what has not started when ``spread_s`` is up is left,
        as ``deferred``, to the next tick. Without it, one after another at
        the rate limit."""
        report = RefreshReport()
        # One interval and a fifth: ticks drift, and a token due just after
        # the next tick would otherwise be refreshed by a request instead.
        horizon = self.policy.margin_s * 1.2
        # The window counts from here: reading 10,000 tokens takes a while.
        began = self.clock()
        due: list[tuple[float, TokenKey]] = []
        for key in self._scheduled():
            current = self._read_shared(key)
            if current is not None and not current.due(self.clock(), self.policy.margin_s, horizon):
                report.fresh.append(key)
                continue
            # Missing or inside its margin (not servable): at once.
            due.append((-math.inf if current is None else current.serve_until(self.policy.margin_s), key))
        due.sort(key=lambda item: item[0])
        pace = _Pace(self.policy.refresh_rate_limit, start=self.clock(), count=len(due), closes_at=began + spread_s)
        for index, (serve_until, key) in enumerate(due):
            turn = pace.turn(index, not_after=serve_until)
            if spread_s and turn > pace.closes_at:
                report.deferred.extend(k for _, k in due[index:])
                log.warning("%d due token(s) left to the next tick: refresh_rate_limit is %d/s",
                            len(due) - index, self.policy.refresh_rate_limit)
                break
            wait_s = turn - self.clock()
            if wait_s > 0:
                self._sleep(wait_s)
            pace.started(max(self.clock(), turn))

            def work(key: TokenKey = key) -> Token:
                current = self._read_shared(key)
                if current is not None and not current.due(self.clock(), self.policy.margin_s, horizon):
                    return current
                return self._fetch_and_store(key)

            try:
                self._locked(key, work)
                report.refreshed.append(key)
            except PighandError as exc:
                report.failed[key] = exc
                if isinstance(exc, AwaitingTicket):
                    # Not an error to alert on at every tick: the platform's push ends it.
                    log.warning("scheduled refresh of %s waits for a pushed ticket: %s", key, exc.message)
                else:
                    log.error("scheduled refresh of %s failed: %s", key, exc.message)
        return report

    def _spend_refresh_budget(self, caller: str, key: TokenKey) -> None:
        if self.counters is None:
            return
        now = self.clock()
        window = math.floor(now / 60) * 60
        try:
            wait_s = self.counters.hit(f"refresh:{caller}:{key.platform}:{key.appid}",
                                       limit=self.policy.refresh_limit_per_minute,
                                       window_start=window, window_end=window + 60, now=now)
        except Unavailable as exc:
            self._warn("rate limit", exc)
            return
        if wait_s is not None:
            raise RateLimited(f"client {caller!r} refreshed {key} {self.policy.refresh_limit_per_minute} times "
                              "this minute; use the current token or wait", wait_s)

    def _scheduled(self) -> list[TokenKey]:
        """Every token the credentials serve. Secrets are not decrypted here:
        one row that cannot be must not stop the others."""
        keys: list[TokenKey] = []
        for platform, appid in self.credentials.keys():
            # A third-party app's credential serves its own token and its
            # accounts' tokens (other platforms naming it as theirs).
            for served in self._served_by.get(platform, ()):
                keys.extend(TokenKey(served, token_appid) for token_appid in self.providers[served].token_appids(appid))
        return keys

    def status(self) -> list[TokenStatus]:
        """The state of every configured token, from the shared tiers."""
        rows = []
        now = self.clock()
        for key in self._scheduled():
            token = self._newest_stored(key)
            cooldown = self._cooldown(key)
            if token is not None and token.servable(now, self.policy.margin_s):
                state = "valid"
            elif token is not None and now < token.expires_at:
                state = "inside margin"
            elif cooldown is not None:
                state = "failing"
            else:
                state = "expired" if token is not None else "missing"
            message = cooldown.message if cooldown is not None else None
            match = _REPORTED_IP.search(message or "")
            rows.append(TokenStatus(
                platform=key.platform, appid=key.appid, state=state,
                expires_in_s=None if token is None else token.expires_at - now,
                last_refresh_at=None if token is None else token.fetched_at,
                last_error=message, errcode=None if cooldown is None else cooldown.errcode,
                egress_ip=match.group(1) if match else None,
                retry_in_s=max(0.0, cooldown.until - now) if cooldown and cooldown.active(now) else None,
            ))
        return rows

    def install(self, platform: str, appid: str, token: Token) -> None:
        """Store a token the platform handed over with something else (an
        authorization exchanged for an account's grant) in every tier, as a
        fetch would: served as it is, no extra call."""
        key = TokenKey(platform, appid)
        self.clear_cooldown(key)
        self._write(key, token)

    def platform_call(self, key: TokenKey, call: Callable[[], T]) -> T:
        """A platform call made for ``key`` outside a fetch (an authorization
        code exchanged): retried, counted and logged like a fetch."""
        return self._retrying(call, key)

    def forget(self, platform: str, appid: str, *, everywhere: bool = False) -> None:
        """Drop a token and its cooldown everywhere (credential removed or
        replaced). With ``everywhere``, a tier that could not be reached is
        Unavailable once every other tier is done: the caller must not
        report the token gone (an account that left: its token would be
        served again once that tier is back)."""
        key = TokenKey(platform, appid)
        failed: Unavailable | None = None
        for store in self._read_order:
            try:
                store.delete(key)
            except Unavailable as exc:
                self._warn(store.name, exc)
                failed = failed or exc
        self.clear_cooldown(key)
        if everywhere and failed is not None:
            raise Unavailable(f"{platform} {appid}: the token could not be removed from every store "
                              f"({failed.message}); try again")

    def clear_cooldown(self, key: TokenKey) -> None:
        try:
            self.cooldowns.clear(key)
        except Unavailable as exc:
            self._warn("cooldown", exc)

    # -- tiers -------------------------------------------------------------
    def _read(self, key: TokenKey) -> _Found:
        found = _Found()
        now = self.clock()
        for index, store in enumerate(self._read_order):
            try:
                token = store.get(key)
            except Unavailable as exc:
                self._warn(store.name, exc)
                continue
            if token is None:
                continue
            if token.servable(now, self.policy.margin_s):
                for higher in self._read_order[:index]:
                    self._put(higher, key, token)
                found.servable = token
                self._answered(key, store.name)
                return found
            if now < token.expires_at and token.newer_than(found.usable):
                found.usable = token
        return found

    def _recall(self, key: TokenKey) -> Token | None:
        """Every tier missed, but this worker's memory set the token aside
        when it lost track of the shared tiers (Redis restarted, empty): if it
        is still servable, write it back to them and serve it, instead of a
        platform call for a token that is still good."""
        if self.local is None:
            return None
        token = self.local.recall(key)
        if token is None or not token.servable(self.clock(), self.policy.margin_s):
            return None
        self._write(key, token)
        self._answered(key, self.local.name)
        log.info("%s: the shared tiers had no token; wrote back the one this worker held", key)
        return token

    def _read_shared(self, key: TokenKey) -> Token | None:
        """The newest servable token of the shared tiers (what every worker sees)."""
        now = self.clock()
        return self._newest(key, self._shared, lambda t: t.servable(now, self.policy.margin_s))

    def _newest_unexpired(self, key: TokenKey) -> Token | None:
        now = self.clock()
        return self._newest(key, self._read_order, lambda t: now < t.expires_at)

    def _newest_stored(self, key: TokenKey) -> Token | None:
        return self._newest(key, self._read_order, lambda t: True)

    def _newest(self, key: TokenKey, stores: Sequence[TokenStore], accept: Callable[[Token], bool]) -> Token | None:
        newest: Token | None = None
        for store in stores:
            try:
                token = store.get(key)
            except Unavailable as exc:
                self._warn(store.name, exc)
                continue
            if token is not None and accept(token) and token.newer_than(newest):
                newest = token
        return newest

    @staticmethod
    def last_tier() -> str | None:
        """Which tier answered this request's lookup."""
        return ANSWERED_BY.get()

    def _answered(self, key: TokenKey, tier: str) -> None:
        ANSWERED_BY.set(tier)
        self.metrics.token_lookup(key.platform, tier)

    def _put(self, store: TokenStore, key: TokenKey, token: Token) -> bool:
        """Write one tier; False if it failed (it is then skipped, not fatal)."""
        try:
            store.put(key, token)
            return True
        except Unavailable as exc:
            self._warn(store.name, exc)
            return False

    def _write(self, key: TokenKey, token: Token) -> None:
        shared_ok = False
        for store in self.stores:
            if self._put(store, key, token) and store.shared:
                shared_ok = True
        if self.fallback is not None:
            if not shared_ok:
                # Redis is down: keep the token in SQL so no worker loses it.
                shared_ok = self._put(self.fallback, key, token)
            else:
                try:
                    self.fallback.discard_older(key, token.fetched_at)
                except Unavailable as exc:
                    self._warn(self.fallback.name, exc)
        if not shared_ok and self.local is not None:
            # No shared tier took it (SQLite on a full disk): this worker
            # keeps serving it past local_cache_ttl rather than fetch again.
            self.local.set_aside(key, token)

    def _warn(self, tier: str, exc: Unavailable) -> None:
        # One warning per tier per interval, not one per request.
        now = time.monotonic()
        if now - self._warned_at.get(tier, -math.inf) >= self.policy.margin_s:
            self._warned_at[tier] = now
            log.warning("%s unavailable, carrying on without it: %s", tier, exc.message)

    # -- the platform --------------------------------------------------------
    def _locked(self, key: TokenKey, work: Callable[[], Token],
                on_busy: Callable[[], Token] | None = None,
                on_timeout: Callable[[], Token] | None = None) -> Token:
        """Run ``work`` holding the token's lock. With ``on_busy``, do not wait
        for a lock someone else holds: answer ``on_busy()`` instead; else wait
        up to ``lock_wait_s``, then answer ``on_timeout()`` (default: any
        servable token, or 503)."""
        wait_s = 0.0 if on_busy is not None else self.policy.lock_wait_s
        busy = on_busy or on_timeout or (lambda: self._waited_too_long(key))
        flight = self._enter_flight(key)
        try:
            started = time.monotonic()
            acquired = flight.acquire(timeout=wait_s) if wait_s > 0 else flight.acquire(blocking=False)
            if not acquired:
                self.metrics.lock_wait(time.monotonic() - started)
                return busy()
            try:
                with self.locks.hold(f"token:{key.platform}:{key.appid}", lease_s=self.policy.lock_lease_s,
                                     wait_s=wait_s) as held:
                    self.metrics.lock_wait(time.monotonic() - started)
                    return work() if held else busy()
            finally:
                flight.release()
        finally:
            self._leave_flight(key)

    def _enter_flight(self, key: TokenKey) -> threading.Lock:
        with self._flights_mutex:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
            flight.users += 1
            return flight.lock

    def _leave_flight(self, key: TokenKey) -> None:
        with self._flights_mutex:
            flight = self._flights[key]
            flight.users -= 1
            if flight.users == 0:
                del self._flights[key]

    def _waited_too_long(self, key: TokenKey, not_this: str | None = None) -> Token:
        token = self._read(key).servable
        if token is not None and token.value != not_this:
            return token
        # A crashed holder's lease runs out this long after a waiter gives up.
        raise Unavailable(f"timed out waiting for another worker's refresh of {key}; try again",
                          retry_after_s=self.policy.lock_lease_s - self.policy.lock_wait_s)

    def _credential(self, key: TokenKey) -> Credential:
        """The credential that serves ``key`` (as the token's appid), or UnknownApp."""
        provider = self.providers[key.platform]
        credential = self.credentials.get(provider.credential_platform or key.platform,
                                          provider.credential_appid(key.appid))
        if credential is None:
            raise UnknownApp(key.platform, provider.credential_appid(key.appid))
        problem = provider.account_error(key.appid)
        if problem:
            raise NotFound(problem)
        return credential if credential.appid == key.appid else replace(credential, appid=key.appid)

    def _fetch_and_store(self, key: TokenKey, *, replacing: str | None = None,
                         credential: Credential | None = None) -> Token:
        provider = self.providers[key.platform]
        credential = credential or self._credential(key)
        cooldown = self._cooldown(key)
        if cooldown is not None and cooldown.active(self.clock()):
            raise self._resting(key, cooldown)
        previous = self._newest_unexpired(key) if getattr(provider, "keeps_token_until_expiry", False) else None
        started = time.monotonic()
        try:
            # Inside an outage (the previous call failed too), one call: no retries.
            token = self._retrying(lambda: provider.fetch(credential, replacing=replacing), key,
                                   attempts=1 if cooldown is not None else None)
        except UpstreamError as exc:
            self._record_failure(key, cooldown, exc)
            raise
        finally:
            self.metrics.refresh(key.platform, time.monotonic() - started)
        if previous is not None and token.value == previous.value:
            # The platform will hand back this same token until it expires
            # (WeCom): asking again inside the margin would only poll it, so
            # serve it to its end, never believing a later expiry than first said.
            token = replace(token, expires_at=min(token.expires_at, previous.expires_at), final=True)
        if cooldown is not None:
            self.clear_cooldown(key)
        self._write(key, token)
        self._answered(key, "platform")
        log.info("fetched a %s token for appid %s, expires in %.0f s",
                 key.platform, key.appid, token.expires_at - self.clock())
        return token

    def _fetch_ticket(self, key: TokenKey, ticket_key: TokenKey, ticket_type: str) -> Token:
        provider: TicketProvider = self.providers[key.platform]  # type: ignore[assignment]
        cooldown = self._cooldown(ticket_key)
        if cooldown is not None and cooldown.active(self.clock()):
            raise self._resting(ticket_key, cooldown)
        token = self.get(key.platform, key.appid)
        try:
            try:
                ticket = self._retrying(lambda: provider.fetch_ticket(token.value, ticket_type), key)
            except UpstreamError as exc:
                if exc.errcode not in provider.invalid_token_codes:
                    raise
                # The platform no longer takes the token (WeChat 40001: another
                # caller fetched a new one): replace it the way a caller's PUT
                # would, so concurrent callers share one refresh, and try once more.
                log.warning("%s rejected the token while fetching a %s ticket (%s); refreshing it",
                            key, ticket_type, exc.errcode)
                token = self.refresh(key.platform, key.appid, stale_token=token.value)
                ticket = self._retrying(lambda: provider.fetch_ticket(token.value, ticket_type), key)
        except UpstreamError as exc:
            self._record_failure(ticket_key, cooldown, exc)
            raise
        if cooldown is not None:
            self.clear_cooldown(ticket_key)
        self._write(ticket_key, ticket)
        self._answered(ticket_key, "platform")
        return ticket

    def _cooldown(self, key: TokenKey) -> Cooldown | None:
        try:
            return self.cooldowns.get(key)
        except Unavailable as exc:
            self._warn("cooldown", exc)
            return None

    def _record_failure(self, key: TokenKey, previous: Cooldown | None, exc: UpstreamError) -> None:
        failures = (previous.failures if previous else 0) + 1
        pause_s = self.policy.cooldown_s(failures, exc.pause_s)
        if exc.retryable and not exc.pause_s and pause_s > OUTAGE_PROBE_S and self._newest_unexpired(key) is None:
            pause_s = OUTAGE_PROBE_S
        cooldown = Cooldown(failures, self.clock() + pause_s, exc.platform_message, exc.errcode)
        try:
            self.cooldowns.record(key, cooldown)
        except Unavailable as warn:
            self._warn("cooldown", warn)
        level = logging.ERROR if exc.pause_s else logging.WARNING
        log.log(level, "%s: no new call for %.0f s after %d failure(s): %s",
                key, pause_s, failures, exc.message)

    def _resting(self, key: TokenKey, cooldown: Cooldown) -> UpstreamError:
        wait_s = max(1, math.ceil(cooldown.until - self.clock()))
        error = UpstreamError(
            key.platform,
            f"{cooldown.message}; no new call for appid {key.appid} for {wait_s} s "
            f"after {cooldown.failures} failure(s)",
            errcode=cooldown.errcode,
        )
        error.headers["Retry-After"] = str(wait_s)
        return error

    def _retrying(self, call: Callable[[], T], key: TokenKey, attempts: int | None = None) -> T:
        """Call the platform, retrying transient failures (5xx, timeouts,
        WeChat -1) with exponential backoff and jitter inside the budget, up
        to ``attempts`` calls (default: the policy's); configuration errors
        are raised at once."""
        attempts = attempts or self.policy.retry_attempts
        deadline = time.monotonic() + self.policy.upstream_budget_s
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                result = call()
            except UpstreamError as exc:
                self._platform_call(key, attempt, started, exc)
                log.warning("%s call for appid %s failed (attempt %d): %s",
                            key.platform, key.appid, attempt, exc.message)
                if not exc.retryable or attempt >= attempts:
                    raise
                delay = self.policy.retry_base_s * 2 ** (attempt - 1) * (0.5 + random.random())
                if time.monotonic() + delay + self.policy.upstream_timeout_s > deadline:
                    raise
                self._sleep(delay)
            else:
                self._platform_call(key, attempt, started, None)
                return result

    def _platform_call(self, key: TokenKey, attempt: int, started: float, error: UpstreamError | None) -> None:
        seconds = time.monotonic() - started
        outcome = "ok" if error is None else ("timeout" if isinstance(error, UpstreamTimeout) else "error")
        errcode = "" if error is None or error.errcode is None else str(error.errcode)
        self.metrics.platform_call(key.platform, outcome, errcode, seconds)
        log.info("platform call", extra={"event": {
            "kind": "platform_call", "platform": key.platform, "appid": key.appid, "attempt": attempt,
            "outcome": outcome, "errcode": errcode or None, "duration_ms": round(seconds * 1000, 1)}})
