"""TokenService with in-memory adapters and an injected clock: no I/O."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import pytest

from pighand_token.adapters.memory import (
    MemoryCooldowns,
    MemoryCredentialRepository,
    MemoryLocks,
    MemoryTokenStore,
)
from pighand_token.core.domain import Credential, Token, TokenKey
from pighand_token.core.errors import (
    AwaitingTicket,
    BadRequest,
    PighandError,
    Unavailable,
    UnknownApp,
    UnknownPlatform,
    UpstreamError,
)
from pighand_token.core.service import Policy, TokenService

KEY = TokenKey("wechat", "wx1")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SharedStore:
    """Stands in for Redis/SQL: shared, keeps tokens until told otherwise."""

    name = "shared"
    shared = True

    def __init__(self) -> None:
        self.tokens: dict[TokenKey, Token] = {}
        self.down = False

    def get(self, key: TokenKey) -> Token | None:
        if self.down:
            raise Unavailable("shared store down")
        return self.tokens.get(key)

    def put(self, key: TokenKey, token: Token) -> bool:
        if self.down:
            raise Unavailable("shared store down")
        current = self.tokens.get(key)
        if current is not None and current.fetched_at >= token.fetched_at:
            return False
        self.tokens[key] = token
        return True

    def delete(self, key: TokenKey) -> None:
        self.tokens.pop(key, None)


@dataclass
class FakeProvider:
    clock: Clock
    platform: str = "wechat"
    life_s: float = 7200
    # Platform rule to imitate: "new" issues a new token per call (classic),
    # "same" returns the current one while valid (stable, without force).
    rule: str = "new"
    calls: list[str | None] = field(default_factory=list)
    failures: list[PighandError] = field(default_factory=list)
    delay_s: float = 0.0
    _current: Token | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    credential_platform: str | None = None

    def appid_error(self, appid: str) -> str | None:
        return None

    def account_error(self, appid: str) -> str | None:
        return None

    def credential_appid(self, appid: str) -> str:
        return appid

    def check_credential(self, appid: str, secret: str) -> None:
        pass

    def token_appids(self, appid: str) -> list[str]:
        return [appid]

    def fetch(self, credential: Credential, *, replacing: str | None = None) -> Token:
        with self._lock:
            self.calls.append(replacing)
            if self.failures:
                raise self.failures.pop(0)
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.clock.advance(0.001)  # a call takes time
        now = self.clock()
        with self._lock:
            if self.rule == "same" and self._current and self._current.expires_at > now \
                    and self._current.value != replacing:
                return Token(self._current.value, self._current.expires_at, now)
            self._current = Token(f"tok-{len(self.calls)}", now + self.life_s, now)
            return self._current


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(clock: Clock) -> FakeProvider:
    return FakeProvider(clock)


@pytest.fixture
def shared() -> SharedStore:
    return SharedStore()


@pytest.fixture
def memory(clock: Clock) -> MemoryTokenStore:
    return MemoryTokenStore(clock, ttl_s=30)


def make_service(clock: Clock, provider: FakeProvider, shared: SharedStore, memory: MemoryTokenStore,
                 margin_s: float = 300, **policy: float) -> TokenService:
    return TokenService(
        credentials=MemoryCredentialRepository([Credential("wechat", "wx1", "secret-1")]),
        stores=[memory, shared], locks=MemoryLocks(clock), providers={"wechat": provider}, clock=clock,
        cooldowns=MemoryCooldowns(),
        policy=Policy(margin_s=margin_s, upstream_timeout_s=1, **policy), sleep=lambda s: None,
    )


@pytest.fixture
def service(clock: Clock, provider: FakeProvider, shared: SharedStore, memory: MemoryTokenStore) -> TokenService:
    return make_service(clock, provider, shared, memory)


def test_first_get_calls_platform_once_then_serves_from_storage(service: TokenService,
                                                                 provider: FakeProvider) -> None:
    first = service.get("wechat", "wx1")
    assert [service.get("wechat", "wx1").value for _ in range(5)] == [first.value] * 5
    assert len(provider.calls) == 1


def test_token_is_served_until_margin_before_expiry(service: TokenService, provider: FakeProvider,
                                                     clock: Clock) -> None:
    first = service.get("wechat", "wx1").value
    clock.advance(7200 - 300 - 1)
    assert service.get("wechat", "wx1").value == first
    clock.advance(1)
    assert service.get("wechat", "wx1").value != first
    assert len(provider.calls) == 2


def test_margin_is_at_most_half_the_reported_life(service: TokenService, provider: FakeProvider,
                                                   clock: Clock) -> None:
    # A stable token may report only 400 s left: margin 200 s, not 300 s,
    # so it is served for 200 s instead of being re-fetched at once.
    provider.life_s = 400
    first = service.get("wechat", "wx1").value
    clock.advance(199)
    assert service.get("wechat", "wx1").value == first
    clock.advance(1)
    assert service.get("wechat", "wx1").value != first


def test_same_token_returned_inside_margin_does_not_loop(service: TokenService, provider: FakeProvider,
                                                         clock: Clock) -> None:
    provider.rule = "same"
    provider.life_s = 700
    service.get("wechat", "wx1")
    clock.advance(450)  # 250 s left: inside the 300 s margin
    token = service.get("wechat", "wx1")
    # The platform handed back the same token with 250 s left: it is served
    # (margin capped at 125 s), and one call was made for it, not many.
    assert token.value == "tok-1"
    assert len(provider.calls) == 2
    assert service.get("wechat", "wx1").value == "tok-1"
    assert len(provider.calls) == 2


def test_memory_entry_expires_after_local_cache_ttl(service: TokenService, shared: SharedStore,
                                                    memory: MemoryTokenStore, clock: Clock) -> None:
    service.get("wechat", "wx1")
    # Another worker replaced the token in the shared store.
    shared.tokens[KEY] = Token("from-other-worker", clock() + 7000, clock() + 1)
    assert service.get("wechat", "wx1").value == "tok-1"
    clock.advance(30)
    assert service.get("wechat", "wx1").value == "from-other-worker"


def test_shared_tier_backfills_memory(service: TokenService, shared: SharedStore, memory: MemoryTokenStore,
                                      provider: FakeProvider, clock: Clock) -> None:
    shared.tokens[KEY] = Token("stored", clock() + 7000, clock())
    assert service.get("wechat", "wx1").value == "stored"
    assert memory.get(KEY) is not None and memory.get(KEY).value == "stored"  # type: ignore[union-attr]
    assert provider.calls == []


def test_unknown_platform_lists_supported(service: TokenService) -> None:
    with pytest.raises(UnknownPlatform) as info:
        service.get("nope", "wx1")
    assert "wechat" in info.value.message and info.value.status == 404


def test_unknown_appid_is_404_and_bad_appid_is_400(service: TokenService, provider: FakeProvider) -> None:
    with pytest.raises(UnknownApp):
        service.get("wechat", "wx-missing")
    with pytest.raises(BadRequest):
        service.get("wechat", "bad appid!")
    assert provider.calls == []


def test_stale_token_that_is_not_current_returns_current_without_call(service: TokenService,
                                                                       provider: FakeProvider) -> None:
    current = service.get("wechat", "wx1").value
    assert service.refresh("wechat", "wx1", stale_token="an-old-one").value == current
    assert len(provider.calls) == 1


def test_stale_token_that_is_current_is_replaced(service: TokenService, provider: FakeProvider) -> None:
    current = service.get("wechat", "wx1").value
    new = service.refresh("wechat", "wx1", stale_token=current)
    assert new.value != current
    assert provider.calls == [None, current]
    assert service.get("wechat", "wx1").value == new.value


def test_refresh_without_body_always_calls_platform(service: TokenService, provider: FakeProvider,
                                                    clock: Clock) -> None:
    first = service.get("wechat", "wx1").value
    clock.advance(1)
    second = service.refresh("wechat", "wx1").value
    assert second != first and provider.calls == [None, first]


def test_refresh_decides_from_shared_store_not_memory(service: TokenService, shared: SharedStore,
                                                      provider: FakeProvider, clock: Clock) -> None:
    mine = service.get("wechat", "wx1").value
    # Another worker already replaced the token this worker still caches.
    shared.tokens[KEY] = Token("newer", clock() + 7000, clock() + 1)
    assert service.refresh("wechat", "wx1", stale_token=mine).value == "newer"
    assert len(provider.calls) == 1


def test_concurrent_gets_make_one_call(service: TokenService, provider: FakeProvider) -> None:
    provider.delay_s = 0.05
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(service.get("wechat", "wx1").value))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(provider.calls) == 1 and set(results) == {"tok-1"}


def test_concurrent_refreshes_coalesce(service: TokenService, provider: FakeProvider) -> None:
    current = service.get("wechat", "wx1").value
    provider.delay_s = 0.05
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(
        service.refresh("wechat", "wx1", stale_token=current).value)) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(provider.calls) == 2 and set(results) == {"tok-2"}


def test_transient_failures_are_retried(service: TokenService, provider: FakeProvider) -> None:
    provider.failures = [UpstreamError("wechat", "HTTP 500", retryable=True)] * 2
    assert service.get("wechat", "wx1").value == "tok-3"
    assert len(provider.calls) == 3


def test_configuration_errors_are_not_retried(service: TokenService, provider: FakeProvider) -> None:
    provider.failures = [UpstreamError("wechat", "invalid appsecret", errcode=40125)]
    with pytest.raises(UpstreamError) as info:
        service.get("wechat", "wx1")
    assert info.value.errcode == 40125 and info.value.status == 502
    assert len(provider.calls) == 1


def test_retries_stop_after_the_attempt_limit(service: TokenService, provider: FakeProvider) -> None:
    provider.failures = [UpstreamError("wechat", "busy", errcode=-1, retryable=True)] * 5
    with pytest.raises(UpstreamError):
        service.get("wechat", "wx1")
    assert len(provider.calls) == 3


def test_an_older_token_never_replaces_a_newer_one(shared: SharedStore, memory: MemoryTokenStore,
                                                   clock: Clock) -> None:
    newer = Token("newer", clock() + 7200, clock() + 10)
    older = Token("older", clock() + 7200, clock())
    assert shared.put(KEY, newer) and not shared.put(KEY, older)
    assert memory.put(KEY, newer) and not memory.put(KEY, older)
    assert memory.get(KEY).value == "newer"  # type: ignore[union-attr]


def test_scheduler_refreshes_missing_and_due_tokens_only(service: TokenService, provider: FakeProvider,
                                                         clock: Clock) -> None:
    report = service.refresh_due()
    assert report.refreshed == [KEY] and len(provider.calls) == 1
    report = service.refresh_due()
    assert report.fresh == [KEY] and len(provider.calls) == 1
    # Enters its margin (7200 - 300) before the next tick (300 s away).
    clock.advance(7200 - 600)
    report = service.refresh_due()
    assert report.refreshed == [KEY] and len(provider.calls) == 2


def test_scheduler_reports_failures_and_keeps_going(service: TokenService, provider: FakeProvider) -> None:
    provider.failures = [UpstreamError("wechat", "invalid appsecret", errcode=40125)]
    report = service.refresh_due()
    assert KEY in report.failed and report.failed[KEY].status == 502


class Records(logging.Handler):
    """The records of one logger, whatever the app's logging setup did to
    propagation (caplog sees only what reaches the root)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)

    def levels(self, text: str) -> list[int]:
        return [r.levelno for r in self.records if text in r.getMessage()]


def test_scheduler_counts_an_app_awaiting_its_ticket_without_an_error_line(service: TokenService,
                                                                           provider: FakeProvider) -> None:
    provider.failures = [AwaitingTicket("wechat wx_app: waiting for the platform to push a ticket")]
    with Records("pighand_token.core.service") as logged:
        report = service.refresh_due()
    assert KEY in report.failed and report.failed[KEY].status == 503
    assert logged.levels(f"scheduled refresh of {KEY} waits for a pushed ticket") == [logging.WARNING]
    assert logging.ERROR not in logged.levels(str(KEY))
    # Any other failure still is an error.
    provider.failures = [UpstreamError("wechat", "system busy", errcode=-1, retryable=False)]
    with Records("pighand_token.core.service") as logged:
        service.refresh_due()
    assert logging.ERROR in logged.levels(f"scheduled refresh of {KEY} failed")


def test_shared_store_down_serves_from_memory(service: TokenService, shared: SharedStore,
                                              provider: FakeProvider) -> None:
    first = service.get("wechat", "wx1").value
    shared.down = True
    assert service.get("wechat", "wx1").value == first
    assert len(provider.calls) == 1


def test_forget_drops_token_from_every_tier(service: TokenService, shared: SharedStore,
                                            memory: MemoryTokenStore) -> None:
    service.get("wechat", "wx1")
    service.forget("wechat", "wx1")
    assert shared.get(KEY) is None and memory.get(KEY) is None


# -- faults ------------------------------------------------------------------
class FallbackShared(SharedStore):
    name = "fallback"

    def discard_older(self, key: TokenKey, fetched_at: float) -> None:
        current = self.tokens.get(key)
        if current is not None and current.fetched_at < fetched_at:
            del self.tokens[key]


def test_failed_refresh_keeps_serving_token_inside_its_margin(service: TokenService, provider: FakeProvider,
                                                              clock: Clock) -> None:
    first = service.get("wechat", "wx1").value
    clock.advance(7200 - 100)  # inside the margin, 100 s before it dies
    provider.failures = [UpstreamError("wechat", "HTTP 500", retryable=True)] * 3
    assert service.get("wechat", "wx1").value == first
    assert len(provider.calls) == 4
    # In the cooldown the platform is left alone and the old token served.
    assert service.get("wechat", "wx1").value == first
    assert len(provider.calls) == 4
    clock.advance(100)  # really expired now: nothing valid to serve
    provider.failures = [UpstreamError("wechat", "invalid appsecret", errcode=40125)]
    with pytest.raises(UpstreamError):
        service.get("wechat", "wx1")


def test_cooldown_doubles_per_failure_and_says_retry_after(service: TokenService, provider: FakeProvider,
                                                           clock: Clock) -> None:
    for expected_pause in (5, 10, 20):
        provider.failures = [UpstreamError("wechat", "invalid appsecret", errcode=40125)]
        with pytest.raises(UpstreamError):
            service.get("wechat", "wx1")
        with pytest.raises(UpstreamError) as info:
            service.get("wechat", "wx1")  # inside the cooldown: no call
        assert info.value.headers["Retry-After"] == str(expected_pause)
        assert info.value.errcode == 40125 and "invalid appsecret" in info.value.message
        clock.advance(expected_pause)
    assert len(provider.calls) == 3
    # Success clears the count: the next failure pauses 5 s again.
    service.get("wechat", "wx1")
    assert service.cooldowns.get(KEY) is None


def test_cooldown_is_capped_at_five_minutes(clock: Clock, provider: FakeProvider, shared: SharedStore,
                                            memory: MemoryTokenStore) -> None:
    service = make_service(clock, provider, shared, memory)
    for _ in range(10):
        provider.failures = [UpstreamError("wechat", "busy", errcode=40125)]
        with pytest.raises(UpstreamError):
            service.get("wechat", "wx1")
        cooldown = service.cooldowns.get(KEY)
        assert cooldown is not None and cooldown.until - clock() <= 300
        clock.advance(cooldown.until - clock())
    assert cooldown is not None and cooldown.failures == 10


def test_quota_exhausted_pauses_five_minutes_at_once(service: TokenService, provider: FakeProvider,
                                                     clock: Clock) -> None:
    provider.failures = [UpstreamError("wechat", "quota", errcode=45009, pause_s=300)]
    with pytest.raises(UpstreamError):
        service.get("wechat", "wx1")
    clock.advance(299)
    with pytest.raises(UpstreamError) as info:
        service.get("wechat", "wx1")
    assert info.value.headers["Retry-After"] == "1" and len(provider.calls) == 1


def test_scheduler_respects_cooldown(service: TokenService, provider: FakeProvider) -> None:
    provider.failures = [UpstreamError("wechat", "invalid appsecret", errcode=40125)]
    assert KEY in service.refresh_due().failed
    assert KEY in service.refresh_due().failed
    assert len(provider.calls) == 1


def test_shared_tier_down_writes_to_fallback_and_recovers(clock: Clock, provider: FakeProvider,
                                                          shared: SharedStore) -> None:
    fallback = FallbackShared()
    memory = MemoryTokenStore(clock, ttl_s=0)  # no in-process cache, to see the tiers
    service = TokenService(
        credentials=MemoryCredentialRepository([Credential("wechat", "wx1", "secret-1")]),
        stores=[shared, memory], fallback=fallback, locks=MemoryLocks(clock), providers={"wechat": provider},
        cooldowns=MemoryCooldowns(), clock=clock, policy=Policy(margin_s=300), sleep=lambda s: None)
    shared.down = True
    first = service.get("wechat", "wx1").value
    assert fallback.tokens[KEY].value == first
    assert service.get("wechat", "wx1").value == first and len(provider.calls) == 1
    # Back again: the token is back-filled from the fallback into the shared tier.
    shared.down = False
    assert service.get("wechat", "wx1").value == first and shared.tokens[KEY].value == first
    # A fresh token written to the shared tier removes the older fallback row.
    clock.advance(1)
    second = service.refresh("wechat", "wx1").value
    assert shared.tokens[KEY].value == second and KEY not in fallback.tokens


def test_same_token_until_expiry_is_served_to_its_end_without_polling(clock: Clock, shared: SharedStore,
                                                                      memory: MemoryTokenStore) -> None:
    # WeCom: the platform hands back the same token until it expires, and
    # reports its remaining life each time.
    provider = FakeProvider(clock, rule="same")
    provider.keeps_token_until_expiry = True  # type: ignore[attr-defined]
    service = make_service(clock, provider, shared, memory)
    first = service.get("wechat", "wx1")
    clock.advance(7200 - 300)  # inside the margin
    assert service.get("wechat", "wx1").value == first.value
    assert len(provider.calls) == 2  # asked once, got the same token back
    for _ in range(29):
        clock.advance(10)  # until 10 s before expiry: served, no call
        assert service.get("wechat", "wx1").value == first.value
    assert len(provider.calls) == 2
    stored = shared.get(KEY)
    assert stored is not None and stored.final and stored.expires_at == first.expires_at
    clock.advance(11)  # expired: the platform now issues a new token
    assert service.get("wechat", "wx1").value != first.value
    assert len(provider.calls) == 3


def test_status_reports_state_expiry_and_last_error_without_values(service: TokenService, provider: FakeProvider,
                                                                   clock: Clock) -> None:
    assert [(s.appid, s.state) for s in service.status()] == [("wx1", "missing")]
    service.get("wechat", "wx1")
    (row,) = service.status()
    assert row.state == "valid" and 7199 < (row.expires_in_s or 0) <= 7200 and row.last_error is None
    clock.advance(7200 - 100)
    provider.failures = [UpstreamError(
        "wechat", "caller IP 203.0.113.7 is not in the app's API IP whitelist (invalid ip 203.0.113.7 ipv6 "
        "::ffff:203.0.113.7, not in whitelist rid: 1)", errcode=40164)]
    service.get("wechat", "wx1")  # refresh fails; the old token is still served
    (row,) = service.status()
    assert row.state == "inside margin" and row.errcode == 40164 and row.egress_ip == "203.0.113.7"
    assert row.retry_in_s is not None and "tok-" not in repr(row)
    clock.advance(100)
    assert service.status()[0].state == "failing"


def test_put_with_a_stale_token_repairs_a_tier_still_holding_it(clock: Clock, provider: FakeProvider,
                                                                shared: SharedStore) -> None:
    # Redis came back from an outage with the token it had; the newer one,
    # fetched meanwhile, is in the SQL fallback.
    fallback = FallbackShared()
    memory = MemoryTokenStore(clock, ttl_s=30)
    service = TokenService(
        credentials=MemoryCredentialRepository([Credential("wechat", "wx1", "secret-1")]),
        stores=[shared, memory], fallback=fallback, locks=MemoryLocks(clock), providers={"wechat": provider},
        cooldowns=MemoryCooldowns(), clock=clock, policy=Policy(margin_s=300), sleep=lambda s: None)
    shared.tokens[KEY] = Token("old", clock() + 7000, clock() - 10)
    fallback.tokens[KEY] = Token("newer", clock() + 7100, clock() - 5)
    assert service.get("wechat", "wx1").value == "old"
    assert service.refresh("wechat", "wx1", stale_token="old").value == "newer"
    assert service.get("wechat", "wx1").value == "newer" and shared.tokens[KEY].value == "newer"
    assert provider.calls == []


def test_one_unreadable_credential_does_not_stop_the_others(clock: Clock, provider: FakeProvider,
                                                             shared: SharedStore, memory: MemoryTokenStore) -> None:
    from pighand_token.core.crypto import DecryptError

    class Repo(MemoryCredentialRepository):
        def get(self, platform: str, appid: str) -> Credential | None:
            if appid == "wx_broken":
                raise DecryptError("a stored secret cannot be decrypted with any configured encryption_key")
            return super().get(platform, appid)

    service = TokenService(
        credentials=Repo([Credential("wechat", "wx1", "s"), Credential("wechat", "wx_broken", "?")]),
        stores=[memory, shared], locks=MemoryLocks(clock), providers={"wechat": provider},
        cooldowns=MemoryCooldowns(), clock=clock, policy=Policy(margin_s=300), sleep=lambda s: None)
    report = service.refresh_due()
    assert report.refreshed == [KEY] and list(report.failed) == [TokenKey("wechat", "wx_broken")]
    assert [(s.appid, s.state) for s in service.status()] == [("wx1", "valid"), ("wx_broken", "missing")]


def test_expires_in_counts_the_whole_seconds_a_token_is_still_served(service: TokenService, provider: FakeProvider,
                                                                     clock: Clock) -> None:
    first = service.get("wechat", "wx1")
    assert service.expires_in(first) == 7200 - 300
    clock.advance(0.5)
    assert service.expires_in(first) == 7200 - 300 - 1  # rounded down: never longer than it is served
    # Inside its margin, served only because the refresh fails: nothing to cache.
    clock.advance(7200 - 100)
    provider.failures = [UpstreamError("wechat", "HTTP 500", retryable=True)] * 3
    served = service.get("wechat", "wx1")
    assert served.value == first.value and service.expires_in(served) == 0


def test_expires_in_follows_the_margin_of_short_and_final_tokens(clock: Clock, shared: SharedStore,
                                                                 memory: MemoryTokenStore) -> None:
    provider = FakeProvider(clock)
    provider.life_s = 400  # margin capped at half the reported life
    service = make_service(clock, provider, shared, memory)
    assert service.expires_in(service.get("wechat", "wx1")) == 200
    # WeCom's same token handed back inside the margin: served to its end, less 2 s.
    wecom = FakeProvider(clock, rule="same")
    wecom.keeps_token_until_expiry = True  # type: ignore[attr-defined]
    service = make_service(clock, wecom, SharedStore(), MemoryTokenStore(clock, 5))
    service.get("wechat", "wx1")
    clock.advance(7200 - 300)
    final = service.get("wechat", "wx1")
    # 300 s left less 2 s, and the few ms this clock moved since, rounded down.
    assert final.final and service.expires_in(final) == 300 - 2 - 1
