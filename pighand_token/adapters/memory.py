"""In-process adapters: the per-worker token cache, and the in-memory
credential repository and locks the unit tests (and nothing else) use."""

from __future__ import annotations

import builtins
import math
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from ..core.domain import AuditEntry, Client, Cooldown, Credential, Token, TokenKey
from ..core.errors import Conflict
from ..core.ports import Clock


class MemoryTokenStore:
    """Per-worker cache. An entry is served for at most ``ttl_s`` after it was
    stored here; a :class:`~pighand_token.core.ports.TokenChanges` follower
    drops it sooner, as soon as another worker writes a newer token (the TTL
    is the safety net for an announcement that was lost)."""

    name = "memory"
    shared = False

    def __init__(self, clock: Clock, ttl_s: float) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._entries: dict[TokenKey, tuple[Token, float]] = {}
        # Per token, the newest fetched_at another worker announced: a read
        # that was in flight when it was written (an older token read from a
        # shared tier just before) must not put the older token back.
        self._floors: dict[TokenKey, float] = {}
        # What clear() dropped: no longer served from here, but still known
        # good unless a newer token turns up (see recall()).
        self._unconfirmed: dict[TokenKey, Token] = {}
        self._mutex = threading.Lock()

    def get(self, key: TokenKey) -> Token | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        token, stored_at = entry
        if self._clock() - stored_at >= self._ttl_s:
            return None
        return token

    def put(self, key: TokenKey, token: Token) -> bool:
        if self._ttl_s <= 0:
            return False
        with self._mutex:
            if token.fetched_at < self._floors.get(key, -math.inf):
                return False
            current = self._entries.get(key)
            if current is not None and current[0].fetched_at > token.fetched_at:
                return False
            self._entries[key] = (token, self._clock())
            self._unconfirmed.pop(key, None)
            return True

    def delete(self, key: TokenKey) -> None:
        with self._mutex:
            self._entries.pop(key, None)
            self._unconfirmed.pop(key, None)

    def drop_older(self, key: TokenKey, fetched_at: float) -> None:
        with self._mutex:
            if fetched_at > self._floors.get(key, -math.inf):
                self._floors[key] = fetched_at
            current = self._entries.get(key)
            if current is not None and current[0].fetched_at < fetched_at:
                del self._entries[key]
            unconfirmed = self._unconfirmed.get(key)
            if unconfirmed is not None and unconfirmed.fetched_at < fetched_at:
                del self._unconfirmed[key]

    def clear(self) -> None:
        """Serve nothing held until the shared tiers confirm it; keep each
        token for :meth:`recall` (the follower lost its announcements: Redis
        restarted, perhaps empty)."""
        with self._mutex:
            for key, (token, _) in self._entries.items():
                self._unconfirmed[key] = token
            self._entries.clear()

    def set_aside(self, key: TokenKey, token: Token) -> None:
        """Keep ``token`` for :meth:`recall` (no shared tier took it)."""
        with self._mutex:
            current = self._unconfirmed.get(key)
            if current is None or current.fetched_at <= token.fetched_at:
                self._unconfirmed[key] = token

    def recall(self, key: TokenKey) -> Token | None:
        """The token :meth:`clear` set aside for ``key``, once: for the shared
        tiers to get back when they lost it (a Redis restarted empty), rather
        than a platform call for a token this worker knows is good."""
        with self._mutex:
            return self._unconfirmed.pop(key, None)


class MemoryCredentialRepository:
    def __init__(self, credentials: Iterable[Credential] = ()) -> None:
        self._rows = {(c.platform, c.appid): c for c in credentials}
        self._mutex = threading.Lock()

    def get(self, platform: str, appid: str) -> Credential | None:
        return self._rows.get((platform, appid))

    def list(self) -> list[Credential]:
        return sorted(self._rows.values(), key=lambda c: (c.platform, c.appid))

    def keys(self) -> builtins.list[tuple[str, str]]:
        return sorted(self._rows)

    def add(self, credential: Credential, *, update: bool = False) -> None:
        self.add_many([credential], update=update)

    def add_many(self, credentials: Iterable[Credential], *, update: bool = False) -> int:
        batch = list(credentials)
        with self._mutex:
            if not update:
                for c in batch:
                    if (c.platform, c.appid) in self._rows:
                        raise Conflict(f"{c.platform} appid {c.appid!r} already exists")
            for c in batch:
                self._rows[(c.platform, c.appid)] = c
        return len(batch)

    def remove(self, platform: str, appid: str) -> bool:
        with self._mutex:
            return self._rows.pop((platform, appid), None) is not None


class MemoryLocks:
    """Locks within one process: the unit tests' locks, and the fallback of
    the SQLite store's when it takes no writes."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._leases: dict[str, float] = {}
        self._mutex = threading.Lock()

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        with self._mutex:
            lock = self._locks.setdefault(name, threading.Lock())
        acquired = lock.acquire(timeout=wait_s)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()

    def claim(self, name: str, *, lease_s: float) -> bool:
        with self._mutex:
            now = self._clock()
            if self._leases.get(name, 0.0) > now:
                return False
            self._leases[name] = now + lease_s
            return True


class MemoryCooldowns:
    def __init__(self) -> None:
        self._entries: dict[TokenKey, Cooldown] = {}

    def get(self, key: TokenKey) -> Cooldown | None:
        return self._entries.get(key)

    def record(self, key: TokenKey, cooldown: Cooldown) -> None:
        self._entries[key] = cooldown

    def clear(self, key: TokenKey) -> None:
        self._entries.pop(key, None)


class MemoryCounters:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, float], int] = {}
        self._mutex = threading.Lock()

    def hit(self, name: str, *, limit: int, window_start: float, window_end: float, now: float) -> float | None:
        with self._mutex:
            count = self._counts.get((name, window_start), 0)
            if count >= limit:
                return max(0.0, window_end - now)
            self._counts[(name, window_start)] = count + 1
            return None


class MemoryClients:
    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}

    def list(self) -> list[Client]:
        return sorted(self.clients.values(), key=lambda c: c.name)

    def add(self, client: Client) -> None:
        if client.name in self.clients:
            raise Conflict(f"client {client.name!r} already exists")
        self.clients[client.name] = client

    def remove(self, name: str) -> bool:
        return self.clients.pop(name, None) is not None

    def touch(self, name: str, at: float) -> None:
        from dataclasses import replace
        if name in self.clients:
            self.clients[name] = replace(self.clients[name], last_used_at=at)


class MemoryAuditLog:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    def tail(self, count: int) -> list[AuditEntry]:
        return self.entries[-count:]
