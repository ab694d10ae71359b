"""The one place that turns settings into concrete adapters.

Nothing here connects: clients and connections open on first use.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import requests

from .adapters.egress import PlatformSession, ca_bundle_from
from .adapters.fallback import FallbackCooldowns, FallbackCounters, FallbackLocks
from .adapters.grants import SqlGrantStore
from .adapters.memory import MemoryLocks, MemoryTokenStore
from .adapters.prometheus import PrometheusMetrics
from .adapters.redis_compat import RedisCompat
from .adapters.sql import (
    Database,
    MySQLParams,
    SqlAuditLog,
    SqlClients,
    SqlCooldowns,
    SqlCounters,
    SqlCredentialRepository,
    SqlLocks,
    SqlTokenChanges,
    SqlTokenStore,
)
from .adapters.third_party import SqlAccountGrants, SqlTicketStore
from .config import Settings
from .core.audit import Audit
from .core.auth import ClientRegistry
from .core.callbacks import Callbacks
from .core.crypto import Cipher, load_cipher
from .core.domain import Token
from .core.errors import SettingsError, Unavailable
from .core.platform_proxy import PlatformProxy, ProxyLimits
from .core.ports import Clock, Cooldowns, Counters, FallbackStore, Locks, NoTokenChanges, TokenChanges, TokenStore
from .core.service import Policy, TokenService
from .providers import REGISTRY, ProviderContext

if TYPE_CHECKING:
    # Imported where Redis is configured only: redis-py is about 8 MB of a
    # worker's memory that the embedded defaults never use.
    from .adapters import redis as redis_adapters


# Secrets /readyz checks the keys against (any one that opens will do).
READY_KEY_SAMPLE = 20


@dataclass
class Container:
    settings: Settings
    db: Database
    credentials: SqlCredentialRepository
    stores: list[TokenStore]
    locks: Locks
    service: TokenService
    http: requests.Session
    cipher: Cipher
    clients: ClientRegistry
    audit: Audit
    redis: redis_adapters.Client | None = None
    changes: TokenChanges = field(default_factory=NoTokenChanges)
    """Keeps the in-process tier coherent; started by app.start_background."""
    callbacks: Callbacks | None = None
    """What third-party platforms push (tickets, authorizations)."""
    proxy: PlatformProxy | None = None
    """Platform API calls sent on with the hub's token (/proxy/...)."""

    def key_problem(self, limit: int | None = None) -> str | None:
        """Why ``encryption_key`` is wrong for the stored secrets (it opens
        none of them: the keys of another deployment, or an old key dropped
        too early), or None. Unavailable if the store is down."""
        sealed = self.credentials.sealed(limit)
        if not sealed or any(self.cipher.opens(stored) for stored in sealed):
            return None
        return (f"encryption_key=<{self.cipher.key_count} key(s)> is invalid: no configured key decrypts the "
                f"stored secrets ({len(sealed)} checked); configure the key they were encrypted with")

    def check_keys(self) -> None:
        """For readiness: SettingsError if the keys open no stored secret
        (a store that is down is the store's own check)."""
        try:
            problem = self.key_problem(limit=READY_KEY_SAMPLE)
        except Unavailable:
            return
        if problem is not None:
            raise SettingsError(problem)

    def pings(self) -> list[tuple[str, Callable[[], None]]]:
        """One check per configured store, for readiness."""
        checks: list[tuple[str, Callable[[], None]]] = [(self.db.description.split(" ")[0].lower(), self.db.ping),
                                                        ("encryption_key", self.check_keys)]
        client = self.redis
        if client is not None:
            from .adapters import redis as redis_adapters

            def ping_redis() -> None:
                try:
                    client.ping()
                except redis_adapters.REDIS_ERRORS as exc:
                    raise Unavailable(f"{type(exc).__name__}: {exc}") from None
            checks.append(("redis", ping_redis))
        return checks


def build_database(settings: Settings) -> Database:
    timeout = min(settings.upstream_timeout, 5.0)
    if settings.database_url:
        return Database(url=settings.database_url, connect_timeout=timeout, log_statements=settings.mysql_log)
    if settings.uses_mysql:
        if not re.fullmatch(r"[A-Za-z0-9_$]{1,64}", settings.mysql_database):
            raise SettingsError(
                f"mysql_database={settings.mysql_database!r} is invalid: allowed values are 1-64 of A-Z a-z 0-9 _ $"
            )
        return Database(mysql=MySQLParams(
            host=settings.mysql_host, port=settings.mysql_port, user=settings.mysql_username,
            password=settings.mysql_password, database=settings.mysql_database,
            connect_timeout=timeout, log_statements=settings.mysql_log,
        ))
    return Database(sqlite_path=settings.sqlite_path)


def build_redis_compat(settings: Settings) -> RedisCompat | None:
    """The SDK keys written beside each token (``redis_compat``), or None."""
    if not settings.redis_compat:
        return None
    return RedisCompat(settings.redis_compat, wxjava_prefix=settings.redis_compat_wxjava_prefix,
                       wxjava_cp_prefix=settings.redis_compat_wxjava_cp_prefix,
                       wechatpy_prefix=settings.redis_compat_wechatpy_prefix,
                       wechat_stable=settings.wechat_token_mode == "stable")


def bootstrap(settings: Settings, *, clock: Clock = time.time) -> Container:
    db = build_database(settings)
    cipher = load_cipher(settings)
    credentials = SqlCredentialRepository(db, cipher)
    sql = SqlTokenStore(db, cipher)
    policy = Policy(margin_s=settings.corn_interval, upstream_timeout_s=settings.upstream_timeout,
                    cooldown_base_s=settings.failure_cooldown,
                    refresh_limit_per_minute=settings.refresh_limit_per_minute,
                    refresh_rate_limit=settings.refresh_rate_limit)
    # The worker's memory is the first tier read, so a cached GET does no
    # I/O; `changes` drops from it what other workers replace (Redis
    # announcements, else SQL polling). local_cache_ttl 0: no memory tier.
    memory = MemoryTokenStore(clock, settings.local_cache_ttl) if settings.local_cache_ttl > 0 else None
    local: list[TokenStore] = [memory] if memory is not None else []
    changes: TokenChanges = NoTokenChanges()

    stores: list[TokenStore]
    locks: Locks
    cooldowns: Cooldowns
    counters: Counters
    fallback: FallbackStore | None = None
    client: redis_adapters.Client | None = None
    if settings.uses_redis:
        from .adapters import redis as redis_adapters

        client = redis_adapters.connect(
            url=settings.redis_url, host=settings.redis_host, port=settings.redis_port,
            password=settings.redis_pwd, db=settings.redis_db, sentinels=settings.redis_sentinels,
            sentinel_master=settings.redis_sentinel_master, cluster_nodes=settings.redis_cluster_nodes,
            timeout_s=min(settings.upstream_timeout, 2.0),
        )
        breaker = redis_adapters.Breaker()
        prefix = settings.redis_key_prefix
        redis_store = redis_adapters.RedisTokenStore(client, clock=clock, margin_s=settings.corn_interval,
                                                     key_prefix=prefix, breaker=breaker,
                                                     compat=build_redis_compat(settings))
        # save_model auto: in-process + Redis, with SQL taking the tokens
        # only while Redis is down; all: every tier, always.
        stores = [*local, redis_store]
        if memory is not None:
            changes = redis_adapters.RedisTokenChanges(client, memory, key_prefix=prefix)
        if settings.save_model == "all":
            stores.append(sql)
        else:
            fallback = sql
        locks = FallbackLocks(redis_adapters.RedisLocks(client, key_prefix=prefix, breaker=breaker),
                              SqlLocks(db, clock))
        cooldowns = FallbackCooldowns(
            redis_adapters.RedisCooldowns(client, clock=clock, key_prefix=prefix, breaker=breaker), SqlCooldowns(db))
        counters = FallbackCounters(redis_adapters.RedisCounters(client, key_prefix=prefix, breaker=breaker),
                                    SqlCounters(db))
    else:
        stores = [*local, sql]
        if memory is not None:
            # A token reaches SQL up to one platform call after its
            # fetched_at, and instances' clocks differ by up to 30 s.
            changes = SqlTokenChanges(sql, memory, clock=clock, window_s=policy.upstream_budget_s + 30)
        locks = SqlLocks(db, clock)
        if db.dialect == "sqlite":
            # One host: when SQLite takes no writes (a full disk), the
            # workers' own locks still let a refresh happen.
            locks = FallbackLocks(locks, MemoryLocks(clock))
        cooldowns = SqlCooldowns(db)
        counters = SqlCounters(db)

    # Every platform call (token and ticket fetches, third-party calls) goes
    # through this one Session, so platform_http_proxy applies to all of them.
    http = PlatformSession(settings.platform_http_proxy, settings.no_proxy, ca_bundle=ca_bundle_from())
    # Secrets at rest: the grants are sealed like the credentials.
    tickets, account_grants = SqlTicketStore(db, cipher), SqlAccountGrants(db, cipher)
    tokens = _LateTokens()
    context = ProviderContext(settings=settings, session=http, clock=clock, grants=SqlGrantStore(db, cipher),
                              locks=locks, counters=counters, tickets=tickets, account_grants=account_grants,
                              tokens=tokens)
    providers = {platform: build(context) for platform, build in REGISTRY.items()}
    metrics = PrometheusMetrics()
    service = TokenService(
        credentials=credentials, stores=stores, fallback=fallback, locks=locks, providers=providers,
        cooldowns=cooldowns, counters=counters, metrics=metrics, clock=clock, policy=policy,
        local=memory,
    )
    # The providers' session: whatever egress it is given applies to proxied calls too.
    proxy = PlatformProxy(service=service, session=http, counters=counters, metrics=metrics, clock=clock,
                          limits=ProxyLimits(max_body=settings.proxy_max_body, timeout_s=settings.proxy_timeout,
                                             rate_limit=settings.proxy_rate_limit))
    tokens.service = service
    audit = Audit(SqlAuditLog(db), clock)
    return Container(settings=settings, db=db, credentials=credentials, stores=stores, locks=locks,
                     service=service, http=http, cipher=cipher, clients=ClientRegistry(SqlClients(db), clock),
                     audit=audit, redis=client, changes=changes,
                     callbacks=Callbacks(service=service, credentials=credentials, tickets=tickets,
                                         grants=account_grants, audit=audit, clock=clock),
                     proxy=proxy)


class _LateTokens:
    """The service, for providers (built before it) whose tokens are made
    from other managed tokens."""

    service: TokenService | None = None

    def get(self, platform: str, appid: str) -> Token:
        assert self.service is not None
        return self.service.get(platform, appid)

    def refresh(self, platform: str, appid: str, *, stale_token: str | None = None,
                caller: str | None = None) -> Token:
        assert self.service is not None
        return self.service.refresh(platform, appid, stale_token=stale_token, caller=caller)
