"""Redis adapters: the shared token tier and cross-process locks.

Two keys per token:

- ``<prefix><platform>_<appid>``: the raw token string, expiring when the
  token stops being served. The original service wrote this key and
  existing clients read it directly, so it stays exactly as it was.
- ``<prefix>pighand:token:<platform>:<appid>``: a hash with value,
  expires_at and fetched_at, expiring with the token; the service reads
  this one, because ordering writes needs fetched_at.

Both are written by one Lua script, so a token fetched earlier never
overwrites one fetched later, whichever worker finishes last.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.exceptions import LockError, RedisError

from ..domain import Token, TokenKey
from ..errors import Unavailable
from ..ports import Clock

_PUT_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'fetched_at')
if current and tonumber(current) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'expires_at', ARGV[2], 'fetched_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if tonumber(ARGV[5]) > 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[5])
else
  redis.call('DEL', KEYS[2])
end
return 1
"""


def connect(*, host: str, port: int, password: str, db: int, timeout_s: float) -> redis.Redis:
    """A client; it opens no connection until the first command."""
    return redis.Redis(
        host=host, port=port, password=password or None, db=db,
        socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        health_check_interval=30, decode_responses=True,
    )


class RedisTokenStore:
    name = "redis"
    shared = True

    def __init__(self, client: redis.Redis, *, clock: Clock, margin_s: float, key_prefix: str = "") -> None:
        self._client = client
        self._clock = clock
        self._margin_s = margin_s
        self._prefix = key_prefix
        self._put = client.register_script(_PUT_SCRIPT)

    def meta_key(self, key: TokenKey) -> str:
        return f"{self._prefix}pighand:token:{key.platform}:{key.appid}"

    def raw_key(self, key: TokenKey) -> str:
        return f"{self._prefix}{key.redis_key}"

    def get(self, key: TokenKey) -> Token | None:
        try:
            fields: dict[str, str] = self._client.hgetall(self.meta_key(key))  # type: ignore[assignment]
        except RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}") from None
        if not fields:
            return None
        try:
            return Token(value=fields["value"], expires_at=float(fields["expires_at"]),
                         fetched_at=float(fields["fetched_at"]))
        except (KeyError, ValueError):
            return None

    def put(self, key: TokenKey, token: Token) -> bool:
        now = self._clock()
        meta_ms = math.ceil((token.expires_at - now) * 1000)
        if meta_ms <= 0:
            return False
        raw_ms = max(0, math.floor((token.serve_until(self._margin_s) - now) * 1000))
        args: list[Any] = [token.value, repr(token.expires_at), repr(token.fetched_at), meta_ms, raw_ms]
        try:
            return bool(self._put(keys=[self.meta_key(key), self.raw_key(key)], args=args))
        except RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}") from None

    def delete(self, key: TokenKey) -> None:
        try:
            self._client.delete(self.meta_key(key), self.raw_key(key))
        except RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}") from None


class RedisLocks:
    """redis-py's Lock: SET NX PX with a unique owner value, released by a
    compare-and-delete script, so only the holder frees it and a crashed
    holder's lock lapses after its lease."""

    SLEEP_S = 0.02

    def __init__(self, client: redis.Redis, key_prefix: str = "") -> None:
        self._client = client
        self._prefix = key_prefix

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        lock = self._client.lock(f"{self._prefix}pighand:lock:{name}", timeout=lease_s,
                                 sleep=self.SLEEP_S, blocking_timeout=wait_s)
        try:
            acquired = lock.acquire()
        except RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}") from None
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    lock.release()
                except (LockError, RedisError):
                    # The lease ran out first (or Redis went away); the lock
                    # is already free for others.
                    pass

    def claim(self, name: str, *, lease_s: float) -> bool:
        try:
            return bool(self._client.set(f"{self._prefix}pighand:lease:{name}", "1",
                                         nx=True, px=max(1, int(lease_s * 1000))))
        except RedisError as exc:
            raise Unavailable(f"redis unavailable: {exc}") from None
