"""Shared state that lives in Redis while it answers and in the SQL store
while it does not: locks, cooldowns, rate-limit counters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from ..core.domain import Cooldown, TokenKey
from ..core.errors import Unavailable
from ..core.ports import Cooldowns, Counters, Locks


class FallbackLocks:
    def __init__(self, primary: Locks, secondary: Locks) -> None:
        self._primary = primary
        self._secondary = secondary

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        with ExitStack() as stack:
            try:
                acquired = stack.enter_context(self._primary.hold(name, lease_s=lease_s, wait_s=wait_s))
            except Unavailable:
                acquired = stack.enter_context(self._secondary.hold(name, lease_s=lease_s, wait_s=wait_s))
            yield acquired

    def claim(self, name: str, *, lease_s: float) -> bool:
        try:
            return self._primary.claim(name, lease_s=lease_s)
        except Unavailable:
            return self._secondary.claim(name, lease_s=lease_s)


class FallbackCooldowns:
    """Cooldowns in Redis, and in SQL while Redis does not answer, so a
    failing app keeps resting during an outage."""

    def __init__(self, primary: Cooldowns, secondary: Cooldowns) -> None:
        self._primary = primary
        self._secondary = secondary

    def get(self, key: TokenKey) -> Cooldown | None:
        try:
            return self._primary.get(key)
        except Unavailable:
            return self._secondary.get(key)

    def record(self, key: TokenKey, cooldown: Cooldown) -> None:
        try:
            self._primary.record(key, cooldown)
        except Unavailable:
            self._secondary.record(key, cooldown)

    def clear(self, key: TokenKey) -> None:
        for store in (self._primary, self._secondary):
            try:
                store.clear(key)
            except Unavailable:
                pass


class FallbackCounters:
    """Rate limits counted in Redis, and in SQL while Redis does not answer."""

    def __init__(self, primary: Counters, secondary: Counters) -> None:
        self._primary = primary
        self._secondary = secondary

    def hit(self, name: str, *, limit: int, window_start: float, window_end: float, now: float) -> float | None:
        try:
            return self._primary.hit(name, limit=limit, window_start=window_start, window_end=window_end, now=now)
        except Unavailable:
            return self._secondary.hit(name, limit=limit, window_start=window_start, window_end=window_end, now=now)
