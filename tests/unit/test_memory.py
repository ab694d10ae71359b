"""The worker's memory tier as the token-change followers drive it."""

from __future__ import annotations

from pighand_token.adapters.memory import MemoryTokenStore
from pighand_token.core.domain import Token, TokenKey

KEY = TokenKey("wechat", "wx_app_1")
OTHER = TokenKey("wechat", "wx_app_2")


def token(value: str, fetched_at: float) -> Token:
    return Token(value=value, expires_at=fetched_at + 7200, fetched_at=fetched_at)


def memory() -> MemoryTokenStore:
    return MemoryTokenStore(lambda: 1000.0, ttl_s=5)


def test_a_write_announced_elsewhere_drops_the_older_token_only() -> None:
    cache = memory()
    cache.put(KEY, token("old", 100))
    cache.put(OTHER, token("other", 100))
    cache.drop_older(KEY, 200)
    assert cache.get(KEY) is None and cache.get(OTHER) == token("other", 100)


def test_a_token_as_new_as_the_announced_one_is_kept() -> None:
    cache = memory()
    cache.put(KEY, token("mine", 200))
    cache.drop_older(KEY, 200)
    assert cache.get(KEY) == token("mine", 200)


def test_after_an_announcement_an_older_token_cannot_come_back() -> None:
    cache = memory()
    cache.drop_older(KEY, 200)
    assert cache.put(KEY, token("read in flight", 150)) is False
    assert cache.get(KEY) is None
    assert cache.put(KEY, token("the announced one", 200)) is True


def test_an_earlier_announcement_does_not_lower_the_floor() -> None:
    cache = memory()
    cache.drop_older(KEY, 200)
    cache.drop_older(KEY, 100)  # arrives late
    assert cache.put(KEY, token("older", 150)) is False


def test_clear_drops_every_entry_and_keeps_the_floors() -> None:
    cache = memory()
    cache.put(KEY, token("a", 100))
    cache.put(OTHER, token("b", 100))
    cache.drop_older(OTHER, 150)
    cache.clear()
    assert cache.get(KEY) is None and cache.get(OTHER) is None
    assert cache.put(OTHER, token("b", 100)) is False
