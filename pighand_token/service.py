"""TokenService: the use cases. Everything that decides lives here; the HTTP
blueprint, the CLI and the scheduler only call it.

Lookup: the tiers in order (Redis > in-process > SQL, as bootstrap chose),
back-filling the tiers above the one that answered. A miss takes the
per-token lock (threads of this process first, then the cross-process lock),
reads the shared tiers again, and only then calls the platform, so every
worker and instance together make one call per token.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .domain import Credential, Token, TokenKey, valid_appid
from .errors import BadRequest, PighandError, Unavailable, UnknownApp, UnknownPlatform, UpstreamError
from .ports import Clock, CredentialRepository, Locks, Provider, TokenStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    margin_s: float = 300.0
    """How early a token counts as expired (``corn_interval``); capped at
    half the token's reported life."""
    upstream_timeout_s: float = 5.0
    retry_attempts: int = 3
    retry_base_s: float = 0.2

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


@dataclass
class RefreshReport:
    refreshed: list[TokenKey] = field(default_factory=list)
    fresh: list[TokenKey] = field(default_factory=list)
    failed: dict[TokenKey, PighandError] = field(default_factory=dict)


class TokenService:
    def __init__(self, *, credentials: CredentialRepository, stores: Sequence[TokenStore], locks: Locks,
                 providers: Mapping[str, Provider], clock: Clock = time.time, policy: Policy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not any(s.shared for s in stores):
            raise ValueError("at least one shared token store is required")
        self.credentials = credentials
        self.stores = list(stores)
        self.shared_stores = [s for s in self.stores if s.shared]
        self.locks = locks
        self.providers = dict(providers)
        self.clock = clock
        self.policy = policy or Policy()
        self._sleep = sleep
        self._flights: dict[TokenKey, threading.Lock] = {}
        self._flights_mutex = threading.Lock()
        self._warned_at: dict[str, float] = {}

    # -- queries -----------------------------------------------------------
    def platforms(self) -> list[str]:
        return sorted(self.providers)

    def key(self, platform: str, appid: str) -> TokenKey:
        """Validate a (platform, appid) pair from outside."""
        if platform not in self.providers:
            raise UnknownPlatform(platform, self.platforms())
        if not valid_appid(appid):
            raise BadRequest("appid must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        return TokenKey(platform, appid)

    def get(self, platform: str, appid: str) -> Token:
        """A token that is good for at least the margin: from the first tier
        that has one, else from the platform (one call across all workers)."""
        key = self.key(platform, appid)
        token = self._read(key)
        if token is not None:
            return token

        def work() -> Token:
            # Whoever held the lock before us may have fetched it already.
            token = self._read(key)
            return token if token is not None else self._fetch_and_store(key)

        return self._locked(key, work)

    # -- commands ----------------------------------------------------------
    def refresh(self, platform: str, appid: str, *, stale_token: str | None = None) -> Token:
        """Replace the token with a new one from the platform.

        With ``stale_token`` (the token a caller found rejected): if the shared
        store already holds a different, servable token, that one is the
        answer and the platform is not called. Decided under the lock, from
        the shared tiers only, so concurrent PUTs coalesce into one call.
        """
        key = self.key(platform, appid)
        requested_at = self.clock()

        def work() -> Token:
            current = self._read_shared(key)
            if current is not None:
                if stale_token is not None and current.value != stale_token:
                    return current
                if stale_token is None and current.fetched_at >= requested_at:
                    # Another refresh finished while this one waited.
                    return current
            replacing = stale_token if stale_token is not None else (current.value if current else None)
            return self._fetch_and_store(key, replacing=replacing)

        return self._locked(key, work)

    def refresh_due(self) -> RefreshReport:
        """Refresh every credential whose token is missing or would enter its
        margin before the next tick (one ``margin_s`` from now)."""
        report = RefreshReport()
        horizon = self.policy.margin_s
        for credential in self.credentials.list():
            if credential.platform not in self.providers:
                continue
            key = credential.key
            current = self._read_shared(key)
            if current is not None and not current.due(self.clock(), self.policy.margin_s, horizon):
                report.fresh.append(key)
                continue

            def work(credential: Credential = credential, key: TokenKey = key) -> Token:
                current = self._read_shared(key)
                if current is not None and not current.due(self.clock(), self.policy.margin_s, horizon):
                    return current
                return self._fetch_and_store(key, credential=credential)

            try:
                self._locked(key, work)
                report.refreshed.append(key)
            except PighandError as exc:
                report.failed[key] = exc
                log.error("scheduled refresh of %s failed: %s", key, exc.message)
        return report

    def forget(self, platform: str, appid: str) -> None:
        """Drop a token from every tier (after its credential is removed)."""
        key = TokenKey(platform, appid)
        for store in self.stores:
            try:
                store.delete(key)
            except Unavailable as exc:
                self._warn_store(store, exc)

    # -- tiers -------------------------------------------------------------
    def _servable(self, token: Token | None) -> bool:
        return token is not None and token.servable(self.clock(), self.policy.margin_s)

    def _read(self, key: TokenKey) -> Token | None:
        for index, store in enumerate(self.stores):
            try:
                token = store.get(key)
            except Unavailable as exc:
                self._warn_store(store, exc)
                continue
            if token is not None and self._servable(token):
                for higher in self.stores[:index]:
                    self._put(higher, key, token)
                return token
        return None

    def _read_shared(self, key: TokenKey) -> Token | None:
        newest: Token | None = None
        for store in self.shared_stores:
            try:
                token = store.get(key)
            except Unavailable as exc:
                self._warn_store(store, exc)
                continue
            if token is not None and self._servable(token) and token.newer_than(newest):
                newest = token
        return newest

    def _put(self, store: TokenStore, key: TokenKey, token: Token) -> None:
        try:
            store.put(key, token)
        except Unavailable as exc:
            self._warn_store(store, exc)

    def _write(self, key: TokenKey, token: Token) -> None:
        for store in self.stores:
            self._put(store, key, token)

    def _warn_store(self, store: TokenStore, exc: Unavailable) -> None:
        # One warning per store per margin interval, not one per request.
        now = time.monotonic()
        if now - self._warned_at.get(store.name, -1e9) >= self.policy.margin_s:
            self._warned_at[store.name] = now
            log.warning("%s tier unavailable, serving from the others: %s", store.name, exc.message)

    # -- the platform --------------------------------------------------------
    def _locked(self, key: TokenKey, work: Callable[[], Token]) -> Token:
        flight = self._flight(key)
        if not flight.acquire(timeout=self.policy.lock_wait_s):
            return self._waited_too_long(key)
        try:
            with self.locks.hold(f"token:{key.platform}:{key.appid}", lease_s=self.policy.lock_lease_s,
                                 wait_s=self.policy.lock_wait_s) as held:
                if not held:
                    return self._waited_too_long(key)
                return work()
        finally:
            flight.release()

    def _flight(self, key: TokenKey) -> threading.Lock:
        with self._flights_mutex:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = threading.Lock()
            return flight

    def _waited_too_long(self, key: TokenKey) -> Token:
        token = self._read(key)
        if token is not None:
            return token
        raise Unavailable(f"timed out waiting for another worker's refresh of {key}; try again")

    def _fetch_and_store(self, key: TokenKey, *, replacing: str | None = None,
                         credential: Credential | None = None) -> Token:
        if credential is None:
            credential = self.credentials.get(key.platform, key.appid)
            if credential is None:
                raise UnknownApp(key.platform, key.appid)
        token = self._call(self.providers[key.platform], credential, replacing)
        self._write(key, token)
        log.info("fetched a new %s token for appid %s, expires in %.0f s",
                 key.platform, key.appid, token.expires_at - self.clock())
        return token

    def _call(self, provider: Provider, credential: Credential, replacing: str | None) -> Token:
        """Call the platform, retrying transient failures (5xx, timeouts,
        WeChat -1) with exponential backoff and jitter inside the budget;
        configuration errors are raised at once."""
        deadline = time.monotonic() + self.policy.upstream_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return provider.fetch(credential, replacing=replacing)
            except UpstreamError as exc:
                log.warning("%s call for appid %s failed (attempt %d): %s",
                            provider.platform, credential.appid, attempt, exc.message)
                if not exc.retryable or attempt >= self.policy.retry_attempts:
                    raise
                delay = self.policy.retry_base_s * 2 ** (attempt - 1) * (0.5 + random.random())
                if time.monotonic() + delay + self.policy.upstream_timeout_s > deadline:
                    raise
                self._sleep(delay)
