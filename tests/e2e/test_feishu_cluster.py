"""Feishu and Lark behind the shipped server with four workers, against the fake
platform over HTTP: a cold stampede makes one platform call, and the
scheduler refreshes short-lived tokens once per tick."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import Server
from tests.e2e.test_workers import envelope, seed, storage
from tests.fakes.feishu import APP, APP_PATH, TENANT, TENANT_PATH, FakeFeishu

APP_ID = "cli_a1b2c3d4e5f6a7b8"
SECRET = "s3cr3t-feishu-a1b2"
DEAD = "http://127.0.0.1:9"  # nothing listens: the host not under test


@pytest.fixture
def fake() -> Iterator[FakeFeishu]:
    with FakeFeishu() as platform:
        platform.add_app(APP_ID, SECRET)
        yield platform


@pytest.mark.parametrize("platform,kind", [("feishu", "redis+mysql"), ("lark_app", "sqlite")])
def test_cold_stampede_over_four_workers_makes_one_call(platform: str, kind: str, tmp_path: Path,
                                                        fake: FakeFeishu, request: pytest.FixtureRequest) -> None:
    settings = storage(kind, tmp_path, request)
    seed(settings, (platform, APP_ID, SECRET))
    lark = platform.startswith("lark")
    settings.update(feishu_api_base=DEAD if lark else fake.base_url, lark_api_base=fake.base_url if lark else DEAD)
    fake.delay(0.2)  # a slow platform widens the race
    with Server(tmp_path, workers=4, is_enable_schedule=False, **settings) as server:
        token_url = f"{server.base_url}/token/{platform}/{APP_ID}"
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: requests.get(token_url, timeout=30), range(80)))
        assert [a.status_code for a in answers] == [200] * 80, server.log()
        tokens = {envelope(a)["data"] for a in answers}
        assert len(tokens) == 1
        assert fake.is_valid(tokens.pop(), APP if platform.endswith("_app") else TENANT)
        assert fake.count(APP_PATH if platform.endswith("_app") else TENANT_PATH) == 1
        assert fake.count() == 1


def test_scheduler_refreshes_once_per_tick_and_only_valid_tokens_are_served(tmp_path: Path, fake: FakeFeishu,
                                                                            request: pytest.FixtureRequest) -> None:
    # 8 s tokens (under 30 minutes, so every call issues a new one) and 2 s
    # ticks: margin min(2, 8 / 2) = 2 s, so a token is due when 4 s remain,
    # and is refreshed every ~4 s by one worker. The 2 h app token next to
    # it is fetched once, at the first tick.
    short = "cli_5c4e0d1f2a3b6c7d"
    fake.add_app(short, "short-secret", expires_in=8)
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, ("feishu", short, "short-secret"), ("feishu_app", APP_ID, SECRET))
    with Server(tmp_path, workers=4, feishu_api_base=fake.base_url, lark_api_base=DEAD,
                  is_enable_schedule=True, corn_interval=2, **settings) as server:
        token_url = f"{server.base_url}/token/feishu/{short}"
        started = time.monotonic()
        served = set()
        while time.monotonic() - started < 9:
            answer = requests.get(token_url, timeout=10)
            assert answer.status_code == 200, server.log()
            token = envelope(answer)["data"]
            assert fake.is_valid(token, TENANT), server.log()
            served.add(token)
            time.sleep(0.2)
        app_answer = requests.get(f"{server.base_url}/token/feishu_app/{APP_ID}", timeout=10)
        assert app_answer.status_code == 200 and fake.is_valid(envelope(app_answer)["data"], APP)
    times = sorted(call["time"] for call in fake.find(TENANT_PATH, appid=short))
    # A warm-up call plus one per ~4 s; four uncoordinated workers would make four times as many.
    assert 2 <= len(times) <= 5, times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(gap > 1.5 for gap in gaps), gaps
    assert len(served) >= 2
    assert fake.count(APP_PATH) == 1
