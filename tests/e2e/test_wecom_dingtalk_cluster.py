"""WeCom and DingTalk behind gunicorn with four workers, against the fakes
over HTTP: one platform call per token, and scheduler refreshes made once
per tick by one worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import Server
from tests.e2e.test_workers import envelope, seed, storage
from tests.fakes.dingtalk import TOKEN_PATH as DING_TOKEN
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.wecom import TOKEN_PATH as GETTOKEN
from tests.fakes.wecom import FakeWeCom

CORP = "ww0123456789abcdef"
AGENT = "1000002"
WECOM_APP = f"{CORP}:{AGENT}"
WECOM_SECRET = "wc-S3cr3t_4pp-1000002-xyz"
DING_KEY = "dingfakeappkey0001"
DING_SECRET = "dt-S3cr3t_ding-0001-xyz"


@pytest.fixture
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        yield fake


@pytest.fixture
def dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        yield fake


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


@pytest.mark.parametrize("kind", ["sqlite", "redis+mysql"])
def test_cold_stampede_over_four_workers_makes_one_call_per_platform(
        kind: str, tmp_path: Path, wecom: FakeWeCom, dingtalk: FakeDingTalk,
        request: pytest.FixtureRequest) -> None:
    wecom.add_app(CORP, AGENT, WECOM_SECRET)
    dingtalk.add_app(DING_KEY, DING_SECRET)
    settings = storage(kind, tmp_path, request)
    seed(settings, ("wecom", WECOM_APP, WECOM_SECRET), ("dingtalk", DING_KEY, DING_SECRET))
    # Slow platforms widen the race between the workers.
    wecom.delay(0.2)
    dingtalk.delay(0.2)
    with Server(tmp_path, workers=4, wecom_api_base=wecom.base_url, dingtalk_api_base=dingtalk.base_url,
                  is_enable_schedule=False, **settings) as server:
        paths = [f"/token/wecom/{WECOM_APP}", f"/token/dingtalk/{DING_KEY}"] * 80
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda p: requests.get(server.base_url + p, timeout=30), paths))
        assert [a.status_code for a in answers] == [200] * 160, server.log()
        served_wecom = {envelope(a)["data"] for a in answers[0::2]}
        served_ding = {envelope(a)["data"] for a in answers[1::2]}
        assert len(served_wecom) == 1 and len(served_ding) == 1
        assert wecom.is_valid(served_wecom.pop()) and dingtalk.is_valid(served_ding.pop())
        assert wecom.count(GETTOKEN) == 1, server.log()
        assert dingtalk.count(DING_TOKEN) == 1, server.log()


def test_scheduler_refreshes_once_per_tick_and_every_served_token_is_valid(
        tmp_path: Path, wecom: FakeWeCom, dingtalk: FakeDingTalk, request: pytest.FixtureRequest) -> None:
    # 8 s tokens, 2 s ticks: margin min(2, 8/2) = 2 s, so a token is due
    # from 4 s before it dies; four workers share each tick.
    wecom.add_app(CORP, AGENT, WECOM_SECRET, expires_in=8)
    dingtalk.add_app(DING_KEY, DING_SECRET, expires_in=8)
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, ("wecom", WECOM_APP, WECOM_SECRET), ("dingtalk", DING_KEY, DING_SECRET))
    with Server(tmp_path, workers=4, wecom_api_base=wecom.base_url, dingtalk_api_base=dingtalk.base_url,
                  is_enable_schedule=True, corn_interval=2, **settings) as server:
        # Phase 1: no requests, so every platform call is the scheduler's.
        time.sleep(7)
        for calls in (wecom.find(GETTOKEN), dingtalk.find(DING_TOKEN)):
            times = [c["time"] for c in calls]
            # Warm-up at the first tick, then refreshes from 4 s on; one
            # worker per tick (ticks are >= 1.8 s apart; four workers acting
            # alone would call four times per tick).
            assert 2 <= len(times) <= 4, (times, server.log())
            assert all(gap > 1.5 for gap in gaps(times)), (gaps(times), server.log())
        # DingTalk extended its one token at each refresh.
        assert len(dingtalk.issued()) == 1

        # Phase 2: callers keep asking through a token's expiry.
        served: dict[str, list[str]] = {"wecom": [], "dingtalk": []}
        started = time.monotonic()
        while time.monotonic() - started < 9:
            for platform, appid in (("wecom", WECOM_APP), ("dingtalk", DING_KEY)):
                sent_at = time.time()
                answer = requests.get(f"{server.base_url}/token/{platform}/{appid}", timeout=10)
                assert answer.status_code == 200, server.log()
                token = envelope(answer)["data"]
                fake: FakeWeCom | FakeDingTalk = wecom if platform == "wecom" else dingtalk
                # Alive when asked for (checked on the platform's own clock).
                assert fake.is_valid(token, at=sent_at), (platform, server.log())
                served[platform].append(token)
            time.sleep(0.2)

    # DingTalk: the same token the whole time, its life extended by a
    # refresh every 4-6 s (each leaves it 8 s, so it is not due again for
    # 4 s, whoever made the call); never one call per request.
    ding_times = [c["time"] for c in dingtalk.find(DING_TOKEN)]
    assert set(served["dingtalk"]) == set(dingtalk.issued()) and len(dingtalk.issued()) == 1
    assert all(gap > 1.5 for gap in gaps(ding_times)), gaps(ding_times)
    assert 3 <= len(ding_times) <= 6, ding_times
    # WeCom hands out the same token until it expires, so over 16+ s the
    # service served a new token per lifetime, in the order issued.
    issued = wecom.issued(WECOM_APP)
    assert 2 <= len(issued) <= 4, issued
    order = [issued.index(t) for t in served["wecom"]]
    assert order == sorted(order) and len(set(order)) >= 2, order
    # Near its end a WeCom token is re-asked for only as its (shrinking)
    # margin is crossed, never per request: far fewer calls than requests.
    wecom_calls = wecom.count(GETTOKEN)
    assert wecom_calls <= 6 * len(issued), [round(c["time"] % 100, 2) for c in wecom.find(GETTOKEN)]
