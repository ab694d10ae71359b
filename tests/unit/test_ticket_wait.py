"""Asking a platform to push a ticket: at most once in any 60 seconds."""

from __future__ import annotations

import pytest

from pighand_token.adapters.memory import MemoryLocks
from pighand_token.core.errors import UpstreamError
from pighand_token.providers.third_party import AwaitingTicket, TicketWait


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def waiting(clock: Clock) -> TicketWait:
    return TicketWait("wechat_component", "component_verify_ticket", None, MemoryLocks(clock), clock)


def test_two_asks_either_side_of_a_minutes_end_make_one_call() -> None:
    clock = Clock(119.9)
    wait, calls = waiting(clock), []
    assert wait.ask("wx1", lambda: calls.append(clock.now), clock.now) == "the platform was asked to push one now"
    clock.now = 120.1
    assert "less than a minute ago" in wait.ask("wx1", lambda: calls.append(clock.now), clock.now)
    clock.now = 179.8
    wait.ask("wx1", lambda: calls.append(clock.now), clock.now)
    assert calls == [119.9]
    clock.now = 180.0
    wait.ask("wx1", lambda: calls.append(clock.now), clock.now)
    assert calls == [119.9, 180.0]


def test_each_app_is_asked_for_on_its_own() -> None:
    clock = Clock(1000.0)
    wait, calls = waiting(clock), []
    for appid in ("wx1", "wx2", "wx1"):
        wait.ask(appid, lambda appid=appid: calls.append(appid), clock.now)
    assert calls == ["wx1", "wx2"]


def test_a_failed_ask_is_said_and_not_repeated_within_the_minute() -> None:
    clock = Clock(1000.0)
    wait, calls = waiting(clock), []

    def refused() -> None:
        calls.append(clock.now)
        raise UpstreamError("wechat_component", "invalid component secret", errcode=40013)

    assert "asking the platform to push one failed" in wait.ask("wx1", refused, clock.now)
    clock.now += 30
    with pytest.raises(AwaitingTicket, match="less than a minute ago") as raised:
        wait.current("wx1", refused)
    assert raised.value.headers["Retry-After"] == "60" and calls == [1000.0]
