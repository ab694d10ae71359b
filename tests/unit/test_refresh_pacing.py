"""The scheduler's pacing (``TokenService.refresh_due``) with a fake clock
that the service's own sleeps advance: 10,000 due tokens, the rate limit,
soonest-expiring first, the spread over a tick."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from pighand_token.adapters.memory import MemoryCooldowns, MemoryCredentialRepository, MemoryLocks, MemoryTokenStore
from pighand_token.core.domain import Credential, Token, TokenKey
from pighand_token.core.service import Policy, TokenService
from tests.unit.test_service import Clock, SharedStore

ACCOUNTS = 10_000
RATE = 20
MARGIN_S = 300.0


@dataclass
class TimedProvider:
    """A platform that answers at once and notes when each appid asked."""

    clock: Clock
    life_s: float = 7200
    calls: list[tuple[float, str]] = field(default_factory=list)
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
        now = self.clock()
        self.calls.append((now, credential.appid))
        return Token(f"tok-{len(self.calls)}", now + self.life_s, now)


def appid(i: int) -> str:
    return f"wx{i:05d}"


def build(count: int, clock: Clock) -> tuple[TokenService, TimedProvider, SharedStore]:
    provider = TimedProvider(clock)
    shared = SharedStore()
    service = TokenService(
        credentials=MemoryCredentialRepository([Credential("wechat", appid(i), "s") for i in range(count)]),
        stores=[MemoryTokenStore(clock, ttl_s=5), shared], locks=MemoryLocks(clock),
        providers={"wechat": provider}, cooldowns=MemoryCooldowns(), clock=clock,
        policy=Policy(margin_s=MARGIN_S, refresh_rate_limit=RATE), sleep=clock.advance)
    return service, provider, shared


def busiest_second(times: list[float]) -> int:
    """The most calls in any window [t, t + 1 s)."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered))


def test_ten_thousand_due_tokens_never_exceed_the_rate_in_any_second() -> None:
    clock = Clock()
    service, provider, _ = build(ACCOUNTS, clock)
    started = clock()
    report = service.refresh_due()
    assert len(report.refreshed) == ACCOUNTS and not report.failed and not report.deferred
    times = [t for t, _ in provider.calls]
    assert len(times) == ACCOUNTS
    assert busiest_second(times) <= RATE
    # ... and at the rate (with its slack of 1/20 s a second), not slower:
    # 10,000 at 19/s take 525 s.
    assert times[-1] - started <= ACCOUNTS / RATE * 1.05 + 1
    # Calls that reach the platform up to 1/20 s later than they started
    # still make 20 a second at most.
    assert busiest_second([t + (0.05 if i % 20 == 0 else 0.0) for i, t in enumerate(times)]) <= RATE


def test_a_tick_spreads_its_due_set_and_leaves_what_the_rate_cannot_reach_to_the_next() -> None:
    clock = Clock()
    service, provider, shared = build(ACCOUNTS, clock)
    # All authorized in one burst: every token enters its margin within the
    # next 6 minutes, the later ones a little later than the first.
    now = clock()
    for i in range(ACCOUNTS):
        shared.tokens[TokenKey("wechat", appid(i))] = Token(f"old-{i}", now + MARGIN_S + 60 + i * 0.03, now - 7000)
    report = service.refresh_due(spread_s=240)
    times = [t for t, _ in provider.calls]
    assert busiest_second(times) <= RATE
    assert times[-1] <= now + 240
    # 240 s at 19-20/s: about 4,600 refreshed; the rest, which expire last, wait.
    reached = len(report.refreshed)
    assert 240 * RATE * 0.95 <= reached <= 240 * RATE
    assert report.deferred == [TokenKey("wechat", appid(i)) for i in range(reached, ACCOUNTS)]
    assert [a for _, a in provider.calls] == [appid(i) for i in range(reached)]
    # The next ticks (one interval apart) take the rest, each token before it
    # expires, though by then inside its margin (a burst this big needs
    # over 500 s of refreshing at 20/s).
    for tick in (1, 2):
        clock.now = now + 300 * tick
        report = service.refresh_due(spread_s=240)
    assert not report.deferred
    assert sorted(a for _, a in provider.calls) == [appid(i) for i in range(ACCOUNTS)]
    expires = {appid(i): now + MARGIN_S + 60 + i * 0.03 for i in range(ACCOUNTS)}
    assert all(t < expires[a] for t, a in provider.calls)
    assert busiest_second([t for t, _ in provider.calls]) <= RATE


def test_a_due_set_the_rate_covers_in_a_second_goes_at_once_and_a_larger_one_is_spread() -> None:
    clock = Clock()
    service, provider, shared = build(60, clock)
    now = clock()
    for i in range(60):
        # Due before the next tick, but none enters its margin within 240 s.
        shared.tokens[TokenKey("wechat", appid(i))] = Token(f"old-{i}", now + MARGIN_S + 250 + i, now - 7000)
    report = service.refresh_due(spread_s=240)
    assert len(report.refreshed) == 60
    gaps = [b[0] - a[0] for a, b in zip(provider.calls, provider.calls[1:], strict=False)]
    assert min(gaps) >= 4 - 0.01 and provider.calls[-1][0] - now < 240  # 240 s / 60
    # Twenty (the rate): no waiting beyond the rate's own spacing.
    clock2 = Clock()
    service, provider, shared = build(20, clock2)
    now = clock2()
    for i in range(20):
        shared.tokens[TokenKey("wechat", appid(i))] = Token(f"old-{i}", now + MARGIN_S + 250 + i, now - 7000)
    service.refresh_due(spread_s=240)
    assert provider.calls[-1][0] - now < 1.1


def test_soonest_expiring_first_whatever_the_order_of_the_credentials() -> None:
    clock = Clock()
    service, provider, shared = build(1000, clock)
    now = clock()
    # Credentials in appid order; expiries in the reverse order, and a few missing.
    for i in range(1000):
        if i % 100 == 0:
            continue
        shared.tokens[TokenKey("wechat", appid(i))] = Token(f"old-{i}", now + MARGIN_S + 300 - i * 0.2, now - 7000)
    service.refresh_due()
    order = [a for _, a in provider.calls]
    missing = [appid(i) for i in range(0, 1000, 100)]
    assert order[:10] == missing  # nothing to serve: first, at once
    assert order[10:] == [appid(i) for i in reversed(range(1000)) if i % 100]


def test_a_token_that_would_enter_its_margin_before_its_turn_goes_first() -> None:
    clock = Clock()
    service, provider, shared = build(100, clock)
    now = clock()
    # 99 tokens due late in the tick; the last credential's token enters its
    # margin in 5 s, long before an even spread would reach it.
    for i in range(99):
        shared.tokens[TokenKey("wechat", appid(i))] = Token(f"old-{i}", now + MARGIN_S + 200 + i, now - 7000)
    shared.tokens[TokenKey("wechat", appid(99))] = Token("urgent", now + MARGIN_S + 5, now - 7000)
    service.refresh_due(spread_s=240)
    first_time, first = provider.calls[0]
    assert first == appid(99) and first_time <= now + 5
    # Every token was refreshed before it entered its margin.
    serve_until = {appid(i): now + 200 + i for i in range(99)}
    assert all(t < serve_until[a] for t, a in provider.calls[1:])
