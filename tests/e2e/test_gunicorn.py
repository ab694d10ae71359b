"""gunicorn with its stock gthread worker (``gunicorn -c gunicorn.conf.py``),
the documented alternative to ``pighand-token serve``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from tests.conftest import Gunicorn
from tests.e2e.test_serve import get, metric, wait_until, worker_of
from tests.e2e.test_workers import envelope, seed, storage
from tests.fakes.wechat import FakeWeChat

STABLE = "/cgi-bin/stable_token"
CLASSIC = "/cgi-bin/token"
TOKEN_ROUTE = "/token/<platform>/<appid>"


def test_gunicorn_gthread_serves_gets_puts_scheduler_ticks_and_summed_metrics(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    # 8 s tokens, 2 s ticks: due 4 s before they die, so the scheduler
    # refreshes one after its warm-up call within a few seconds.
    wechat.add_app("wx_short", "short-secret", expires_in=8)
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"), ("wx_short", "short-secret"))
    with Gunicorn(tmp_path, workers=2, threads=4, wechat_api_base=wechat.base_url, wechat_token_mode="classic",
                  is_enable_schedule=True, corn_interval=2, log_level="info", **settings) as server:
        assert "gthread" in server.log()
        # The scheduler's warm-up call, before any request asked for the token.
        wait_until("the warm-up call", lambda: wechat.count(CLASSIC, appid="wx_short") >= 1, timeout_s=10)
        warm = envelope(get(f"{server.base_url}/token/wechat/wx_short"))["data"]
        assert wechat.is_valid(warm)

        url = f"{server.base_url}/token/wechat/wx_app_1"
        old = envelope(get(url))["data"]
        new = envelope(requests.put(url, json={"stale_token": old}, timeout=10))["data"]
        assert new != old and wechat.is_valid(new)

        # Both workers answer (each has its own request id prefix); every
        # scrape, whichever worker takes it, counts the requests of both.
        gets = 2  # the two GETs above
        answered_by: set[str] = set()
        deadline = time.monotonic() + 10
        while len(answered_by) < 2 or gets < 20:
            answer = get(url)
            assert answer.status_code == 200 and envelope(answer)["data"] == new
            answered_by.add(worker_of(answer))
            gets += 1
            assert time.monotonic() < deadline, answered_by
        scraped_by: set[str] = set()
        scrapes = 0
        while len(scraped_by) < 2 or scrapes < 4:
            answer = get(server.base_url + "/metrics")
            scraped_by.add(worker_of(answer))
            assert metric(answer.text, "pighand_http_requests_total", route=TOKEN_ROUTE, method="GET") == gets
            assert metric(answer.text, "pighand_http_requests_total", route=TOKEN_ROUTE, method="PUT") == 1
            scrapes += 1
            assert time.monotonic() < deadline + 10, scraped_by

        # A later tick refreshes the short-lived token, once across both workers.
        wait_until("a scheduled refresh", lambda: wechat.count(CLASSIC, appid="wx_short") >= 2, timeout_s=8)
        refreshed = envelope(get(f"{server.base_url}/token/wechat/wx_short"))["data"]
        assert refreshed != warm and wechat.is_valid(refreshed)
        text = get(server.base_url + "/metrics").text
        assert metric(text, "pighand_scheduler_ticks_total", outcome="ran") >= 2
        assert metric(text, "pighand_scheduler_ticks_total", outcome="skipped") >= 1  # the other worker tried too
    # A call per ~4 s at most; two uncoordinated workers would make twice as many.
    calls = [c["time"] for c in wechat.find(CLASSIC, appid="wx_short")]
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(gap > 1.5 for gap in gaps), gaps
