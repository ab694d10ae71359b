"""Redis adapters: the shared token tier and cross-process locks.

Two keys per token:

- ``<prefix><platform>_<appid>``: the raw token string, expiring when the
  token stops being served. The original service wrote this key and
  existing clients read it directly, so it stays exactly as it was.
- ``<prefix>pighand:token:<platform>:<appid>``: a hash with value,
  expires_at and fetched_at, expiring with the token; the service reads
  this one, because ordering writes needs fetched_at.

Both are written by one Lua script, so a token fetched earlier never
overwrites one fetched later, whichever worker finishes last. (Under Redis
Cluster a script may touch keys of one slot only, and the raw key cannot
carry a hash tag, so there the script writes the hash and the raw key
follows with a plain SET: see :class:`KeyLayout` and
:meth:`RedisTokenStore._mirror_raw`.) With ``redis_compat`` the same script
writes the keys SDKs read (:mod:`.redis_compat`), with the raw key's TTL.
The script also announces each write it makes on
``<prefix>pighand:changed`` (plain pub/sub: platform, appid and
fetched_at, never the token), and :class:`RedisTokenChanges` in every
worker drops what that write replaced from its memory.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import LockError, RedisClusterException, RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from ..core.domain import Cooldown, Token, TokenKey
from ..core.errors import Unavailable
from ..core.ports import Clock, LocalTokenCache
from .follower import Follower
from .redis_compat import RedisCompat, SdkKey

T = TypeVar("T")

log = logging.getLogger(__name__)

_PUT_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'fetched_at')
if current and tonumber(current) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'expires_at', ARGV[2], 'fetched_at', ARGV[3], 'final', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if #KEYS > 1 then
  if tonumber(ARGV[5]) > 0 then
    for i = 2, #KEYS do
      redis.call('SET', KEYS[i], ARGV[7 + i], 'PX', ARGV[5])
    end
  else
    redis.call('DEL', unpack(KEYS, 2))
  end
end
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
"""

# The announcement carries the fetched_at string as stored (repr of the
# float, a JSON number that reads back exactly); cjson would round it.
_DELETE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'fetched_at')
redis.call('DEL', unpack(KEYS))
if current then
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. current .. '}')
end
return 1
"""


def changes_channel(key_prefix: str) -> str:
    """Where every token write is announced (PUBLISH from the scripts)."""
    return f"{key_prefix}pighand:changed"


def _announcement(key: TokenKey, *, deleted: bool) -> str:
    """The announcement's JSON up to its fetched_at number (the caller, or
    the delete script, appends the number and the closing brace)."""
    return json.dumps({"platform": key.platform, "appid": key.appid, "deleted": deleted})[:-1] + ', "fetched_at": '


def read_announcement(data: str) -> tuple[TokenKey, float]:
    """(key, floor) of one announcement: a memory entry fetched before
    ``floor`` is replaced (a deleted token's own fetched_at counts too)."""
    fields = json.loads(data)
    key = TokenKey(str(fields["platform"]), str(fields["appid"]))
    fetched_at = float(fields["fetched_at"])
    return key, math.nextafter(fetched_at, math.inf) if fields.get("deleted") else fetched_at


# What a Redis client raises when Redis fails. redis-py's cluster client also
# raises RedisClusterException (not a RedisError), e.g. SlotNotCoveredError
# while a failed master's slots have no node yet.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


class Breaker:
    """After Redis fails, skip it for ``pause_s`` instead of paying a
    connection timeout on every request; then try again."""

    def __init__(self, pause_s: float = 2.0) -> None:
        self.pause_s = pause_s
        self._open_until = 0.0

    def call(self, fn: Callable[[], T]) -> T:
        if time.monotonic() < self._open_until:
            raise Unavailable("redis unavailable (recent failure; retrying shortly)")
        try:
            return fn()
        except REDIS_ERRORS as exc:
            self._open_until = time.monotonic() + self.pause_s
            raise Unavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from None


class LazyCluster:
    """redis-py's RedisCluster, made on first use.

    RedisCluster asks a node for the slot map in its constructor; made here
    instead, bootstrap connects nothing and a cluster that is down at start
    is a tier to skip (a RedisError, through the Breaker), not a crash.
    """

    def __init__(self, make: Callable[[], RedisCluster]) -> None:
        self._make = make
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def get(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._make()
                    except RedisClusterException as exc:
                        raise redis.ConnectionError(f"redis cluster: {exc}") from None
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


Client = redis.Redis | LazyCluster


def _nodes(value: str) -> list[tuple[str, int]]:
    nodes = []
    for item in value.split(","):
        node_host, _, node_port = item.strip().rpartition(":")
        nodes.append((node_host, int(node_port)))
    return nodes


def connect(*, url: str = "", host: str = "", port: int = 6379, password: str = "", db: int = 0,
            sentinels: str = "", sentinel_master: str = "", cluster_nodes: str = "",
            timeout_s: float = 2.0) -> Client:
    """A client; it opens no connection until the first command.

    ``url`` (redis://, rediss:// for TLS, unix://) wins over host/port;
    ``sentinels`` ("host:port,host:port") with ``sentinel_master`` asks
    Sentinel for the current master on every reconnect; ``cluster_nodes``
    ("host:port,host:port", any nodes of a Redis Cluster) uses redis-py's
    RedisCluster, which follows the slot map (MOVED, failovers) itself.
    """
    # One immediate retry (a pooled connection the server closed), not
    # redis-py's default backoff, which spends seconds on a Redis that is down.
    options: dict[str, Any] = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                   health_check_interval=30, decode_responses=True,
                                   retry=Retry(NoBackoff(), 1))
    if cluster_nodes:
        startup = [ClusterNode(node_host, node_port) for node_host, node_port in _nodes(cluster_nodes)]
        # One retry after the client re-read the slot map (a failover moved
        # the slot), as for one server; then the Breaker skips the tier.
        return LazyCluster(lambda: RedisCluster(startup_nodes=startup, password=password or None,
                                                require_full_coverage=False, **options))
    if sentinels:
        sentinel = Sentinel(_nodes(sentinels), socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return sentinel.master_for(sentinel_master, password=password or None, db=db, **options)
    if url:
        return redis.Redis.from_url(url, **options)
    return redis.Redis(host=host, port=port, password=password or None, db=db, **options)


def is_cluster(client: Client) -> bool:
    return isinstance(client, LazyCluster)


def _script(client: Client, text: str) -> Script:
    # As client.register_script, without touching a LazyCluster (the script
    # as bytes needs no encoder from the client).
    return Script(client, text.encode())  # type: ignore[arg-type]


class KeyLayout:
    """The service's key names.

    Plain Redis and Sentinel keep the names they always had
    (``pighand:token:<platform>:<appid>``, ``pighand:lock:token:<platform>:<appid>``
    ...): a rolling upgrade runs old and new instances side by side, and
    renamed lock keys would let both fetch the same token. A cluster is new
    ground, so there every name carries a hash tag, and all keys of one token
    share ``{<platform>:<appid>}`` (``pighand:token:{wechat:wx1}``,
    ``pighand:lock:token:{wechat:wx1}``, ``pighand:cooldown:{wechat:wx1}``):
    each lives in that token's slot, so any script over them stays in one
    slot. A name without a platform part is tagged whole
    (``pighand:lease:{scheduler-tick}``). The raw ``<platform>_<appid>`` key
    is never tagged: existing readers use it as it is.
    """

    def __init__(self, prefix: str = "", *, cluster: bool = False) -> None:
        self.prefix = prefix
        self.cluster = cluster

    def _tagged(self, name: str) -> str:
        """``kind:rest`` -> ``kind:{rest}`` (the token's tag for ``token:<platform>:<appid>``)."""
        if not self.cluster:
            return name
        head, sep, rest = name.partition(":")
        return f"{head}:{{{rest}}}" if sep and rest else f"{{{name}}}"

    def _token(self, key: TokenKey) -> str:
        name = f"{key.platform}:{key.appid}"
        return f"{{{name}}}" if self.cluster else name

    def meta(self, key: TokenKey) -> str:
        return f"{self.prefix}pighand:token:{self._token(key)}"

    def raw(self, key: TokenKey) -> str:
        return f"{self.prefix}{key.redis_key}"

    def lock(self, name: str) -> str:
        return f"{self.prefix}pighand:lock:{self._tagged(name)}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}pighand:lease:{self._tagged(name)}"

    def cooldown(self, key: TokenKey) -> str:
        return f"{self.prefix}pighand:cooldown:{self._token(key)}"

    def counter(self, name: str, window: int) -> str:
        return f"{self.prefix}pighand:count:{self._tagged(name)}:{window}"


class RedisTokenStore:
    name = "redis"
    shared = True

    def __init__(self, client: Client, *, clock: Clock, margin_s: float, key_prefix: str = "",
                 breaker: Breaker | None = None, compat: RedisCompat | None = None) -> None:
        self._client = client
        self._compat = compat if compat else None
        self._clock = clock
        self._margin_s = margin_s
        self._keys = KeyLayout(key_prefix, cluster=is_cluster(client))
        self._breaker = breaker or Breaker()
        self._put = _script(client, _PUT_SCRIPT)
        self._delete = _script(client, _DELETE_SCRIPT)
        self._channel = changes_channel(key_prefix)
        self._local = threading.local()

    def _reader(self) -> Client:
        """This thread's own connection for token reads, from the shared pool.

        A cached GET is one Redis round trip; going through the pool each time
        adds a lock and a poll of the socket for stray data, about a quarter of
        the round trip's own cost. A thread only ever has one command in flight,
        so it can keep a connection. It returns to the pool when the thread ends.

        Not with Sentinel: after a failover the pool moves only the connections
        it holds to the new master, and a kept one would go on reading the old.
        Not with a cluster either: its client picks the node per key.
        """
        if isinstance(self._client, LazyCluster) or isinstance(self._client.connection_pool,
                                                               SentinelConnectionPool):
            return self._client
        reader: redis.Redis | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = redis.Redis(connection_pool=self._client.connection_pool,
                                                      single_connection_client=True)
        return reader

    def meta_key(self, key: TokenKey) -> str:
        return self._keys.meta(key)

    def raw_key(self, key: TokenKey) -> str:
        return self._keys.raw(key)

    def get(self, key: TokenKey) -> Token | None:
        fields: dict[str, str] = self._breaker.call(lambda: self._reader().hgetall(self.meta_key(key)))  # type: ignore
        return self._token(fields)

    @staticmethod
    def _token(fields: dict[str, str]) -> Token | None:
        if not fields:
            return None
        try:
            return Token(value=fields["value"], expires_at=float(fields["expires_at"]),
                         fetched_at=float(fields["fetched_at"]), final=fields.get("final") == "1")
        except (KeyError, ValueError):
            return None

    def _raw_ms(self, token: Token) -> int:
        return max(0, math.floor((token.serve_until(self._margin_s) - self._clock()) * 1000))

    def put(self, key: TokenKey, token: Token) -> bool:
        now = self._clock()
        meta_ms = math.ceil((token.expires_at - now) * 1000)
        if meta_ms <= 0:
            return False
        raw_ms = self._raw_ms(token)
        fetched_at = repr(token.fetched_at)
        args: list[Any] = [token.value, repr(token.expires_at), fetched_at, meta_ms, raw_ms, int(token.final),
                           self._channel, _announcement(key, deleted=False) + fetched_at + "}"]
        if not self._keys.cluster:
            # KEYS[2:] take ARGV[9:] with the raw key's TTL: the raw key, then the SDKs'.
            sdk = self._sdk_keys(key)
            keys = [self.meta_key(key), self.raw_key(key), *(k.name for k in sdk)]
            args += [token.value, *(k.value(token) for k in sdk)]
            return bool(self._breaker.call(lambda: self._put(keys=keys, args=args)))
        written = bool(self._breaker.call(lambda: self._put(keys=[self.meta_key(key)], args=args)))
        if written:
            self._breaker.call(lambda: self._mirror_raw(key, token))
        return written

    def delete(self, key: TokenKey) -> None:
        args = [self._channel, _announcement(key, deleted=True)]
        if not self._keys.cluster:
            keys = [self.meta_key(key), self.raw_key(key), *(k.name for k in self._sdk_keys(key))]
            self._breaker.call(lambda: self._delete(keys=keys, args=args))
            return
        self._breaker.call(lambda: self._delete(keys=[self.meta_key(key)], args=args))
        self._breaker.call(lambda: self._mirror_raw(key, None))

    def _sdk_keys(self, key: TokenKey) -> list[SdkKey]:
        return self._compat.keys(key) if self._compat is not None else []

    def _mirror_raw(self, key: TokenKey, written: Token | None) -> None:
        """Cluster only: make the raw key follow the hash, after the script.

        What the single script gave and this keeps: a token fetched earlier
        never replaces a later one in the hash (the script decides), and the
        raw key ends up holding what the hash holds. What is lost: the two
        keys no longer change at once. A reader of the raw key sees the old
        token (or none) for one round trip after the hash changed, and two
        writers racing could SET in the opposite order of their scripts; so
        each writer reads the hash again after its SET and, if a newer token
        got there meanwhile, writes that one instead. The last writer to check
        thus leaves the raw key matching the hash (a few rounds at most; writes
        of one token are rare).
        """
        raw = self.raw_key(key)
        sdk = self._sdk_keys(key)
        for _ in range(4):
            raw_ms = self._raw_ms(written) if written is not None else 0
            if raw_ms > 0 and written is not None:
                self._client.set(raw, written.value, px=raw_ms)
                for sdk_key in sdk:  # each in a slot of its own: one SET each
                    self._client.set(sdk_key.name, sdk_key.value(written), px=raw_ms)
            else:
                for name in (raw, *(k.name for k in sdk)):
                    self._client.delete(name)
            current = self._token(self._client.hgetall(self.meta_key(key)))  # type: ignore[arg-type]
            if current == written:
                return
            written = current


class RedisTokenChanges(Follower):
    """Subscribes to the write announcements and drops, from this worker's
    memory, each token a write replaced.

    Why plain pub/sub and not redis-py's server-assisted client-side caching:
    that needs Redis 7.4 or later (RESP3 with client tracking as redis-py
    uses it), and many servers and managed offerings run older ones; the
    writers here are our own scripts, so announcing from them works on every
    Redis, Valkey and Redis Cluster. An announcement missed while the
    subscription was down is made up for by clearing the memory on every
    (re)subscribe; one lost any other way is covered by the memory's TTL.
    """

    WAIT_S = 0.25  # longest a stop waits for the thread to notice

    def __init__(self, client: Client, cache: LocalTokenCache, *, key_prefix: str = "") -> None:
        super().__init__("redis token changes")
        self._client = client
        self._cache = cache
        self._channel = changes_channel(key_prefix)
        self._node_index = random.randrange(1 << 16)

    def _pubsub(self) -> Any:
        if not isinstance(self._client, LazyCluster):
            return self._client.pubsub()
        # A cluster delivers every PUBLISH to every node, replicas included,
        # so any node will do. Each (re)subscribe takes the next node the
        # client knows of (starting at a random one, which spreads workers
        # over the nodes): after a node dies the follower moves on, without
        # waiting for the slot map to leave out the dead node.
        nodes = sorted(self._client.get_nodes(), key=lambda node: node.name)
        self._node_index += 1
        return self._client.pubsub(node=nodes[self._node_index % len(nodes)])

    def _follow(self) -> None:
        try:
            pubsub = self._pubsub()
        except REDIS_ERRORS as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        try:
            pubsub.subscribe(self._channel)
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=self.WAIT_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # Subscribed, first or again (redis-py resubscribes after
                    # a reconnect): what was announced meanwhile is lost.
                    self._cache.clear()
                    self._recovered()
                elif message["type"] == "message":
                    self._apply(message["data"])
        except REDIS_ERRORS as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from None
        finally:
            try:
                pubsub.close()
            except REDIS_ERRORS:
                pass

    def _apply(self, data: str) -> None:
        try:
            key, floor = read_announcement(data)
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed token change announcement on %s", self._channel)
            return
        self._cache.drop_older(key, floor)


class RedisLocks:
    """redis-py's Lock: SET NX PX with a unique owner value, released by a
    compare-and-delete script, so only the holder frees it and a crashed
    holder's lock lapses after its lease."""

    SLEEP_S = 0.02

    def __init__(self, client: Client, key_prefix: str = "", breaker: Breaker | None = None) -> None:
        self._client = client
        self._keys = KeyLayout(key_prefix, cluster=is_cluster(client))
        self._breaker = breaker or Breaker()

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        # Made inside the breaker: a LazyCluster connects on first use.
        lock = self._breaker.call(lambda: self._client.lock(self._keys.lock(name), timeout=lease_s,
                                                            sleep=self.SLEEP_S, blocking_timeout=wait_s))
        acquired = self._breaker.call(lock.acquire)
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    lock.release()
                except (LockError, RedisError, RedisClusterException):
                    # The lease ran out first (or Redis went away); the lock
                    # is already free for others.
                    pass

    def claim(self, name: str, *, lease_s: float) -> bool:
        key = self._keys.lease(name)
        px = max(1, int(lease_s * 1000))
        return bool(self._breaker.call(lambda: self._client.set(key, "1", nx=True, px=px)))


class RedisCooldowns:
    # The failure count outlives the pause, so the next failure doubles it.
    KEEP_S = 600

    def __init__(self, client: Client, *, clock: Clock, key_prefix: str = "",
                 breaker: Breaker | None = None) -> None:
        self._client = client
        self._clock = clock
        self._keys = KeyLayout(key_prefix, cluster=is_cluster(client))
        self._breaker = breaker or Breaker()

    def _key(self, key: TokenKey) -> str:
        return self._keys.cooldown(key)

    def get(self, key: TokenKey) -> Cooldown | None:
        fields: dict[str, str] = self._breaker.call(lambda: self._client.hgetall(self._key(key)))  # type: ignore
        if not fields:
            return None
        errcode: int | str | None = fields.get("errcode") or None
        if isinstance(errcode, str) and errcode.lstrip("-").isdigit():
            errcode = int(errcode)
        return Cooldown(int(fields.get("failures", 1)), float(fields.get("until", 0)),
                        fields.get("message", ""), errcode)

    def record(self, key: TokenKey, cooldown: Cooldown) -> None:
        ttl_ms = max(1, int((cooldown.until - self._clock() + self.KEEP_S) * 1000))
        mapping = {
            "failures": cooldown.failures, "until": repr(cooldown.until), "message": cooldown.message,
            "errcode": "" if cooldown.errcode is None else str(cooldown.errcode),
        }

        def write() -> None:
            pipe = self._client.pipeline()
            pipe.hset(self._key(key), mapping=mapping)  # type: ignore[arg-type]
            pipe.pexpire(self._key(key), ttl_ms)
            pipe.execute()

        self._breaker.call(write)

    def clear(self, key: TokenKey) -> None:
        self._breaker.call(lambda: self._client.delete(self._key(key)))


_HIT_SCRIPT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then
  return redis.call('PTTL', KEYS[1])
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return -1
"""


class RedisCounters:
    def __init__(self, client: Client, *, key_prefix: str = "", breaker: Breaker | None = None) -> None:
        self._keys = KeyLayout(key_prefix, cluster=is_cluster(client))
        self._breaker = breaker or Breaker()
        self._hit = _script(client, _HIT_SCRIPT)

    def hit(self, name: str, *, limit: int, window_start: float, window_end: float, now: float) -> float | None:
        key = self._keys.counter(name, int(window_start))
        left_ms = int(self._breaker.call(lambda: self._hit(keys=[key], args=[limit, int(window_end * 1000)])))
        return None if left_ms == -1 else max(0.0, left_ms / 1000 if left_ms > 0 else window_end - now)
