"""One platform call per token across server instances and workers, and
serving through faults: killed workers, a Redis that dies, a failing platform."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Server, free_port
from tests.e2e.test_workers import envelope, seed, storage
from tests.fakes.wechat import FakeWeChat
from tests.integration.test_redis_connections import wait_ping

STABLE = "/cgi-bin/stable_token"
CLASSIC = "/cgi-bin/token"
APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"


def start_cluster(stack: ExitStack, tmp_path: Path, instances: int, workers: int, **settings: Any) -> list[str]:
    servers = [stack.enter_context(Server(tmp_path, workers=workers, **settings)) for _ in range(instances)]
    return [s.base_url for s in servers]


def spread(urls: list[str], path: str, count: int, method: str = "GET", **kwargs: Any) -> list[requests.Response]:
    def one(i: int) -> requests.Response:
        return requests.request(method, urls[i % len(urls)] + path, timeout=60, **kwargs)

    with ThreadPoolExecutor(64) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.parametrize("kind,instances", [("redis+mysql", 2), ("mysql", 2), ("postgres", 2), ("redis+postgres", 2),
                                            ("sqlite", 1)])
def test_200_cold_gets_over_instances_and_workers_make_one_call(kind: str, instances: int, tmp_path: Path,
                                                                wechat: FakeWeChat,
                                                                request: pytest.FixtureRequest) -> None:
    settings = storage(kind, tmp_path, request)
    seed(settings, (APP, SECRET))
    wechat.delay(0.3)
    with ExitStack() as stack:
        urls = start_cluster(stack, tmp_path, instances, 4, wechat_api_base=wechat.base_url,
                             is_enable_schedule=False, **settings)
        answers = spread(urls, f"/token/wechat/{APP}", 200)
        assert [a.status_code for a in answers] == [200] * 200
        assert len({envelope(a)["data"] for a in answers}) == 1
        assert wechat.count(STABLE) == 1


@pytest.mark.parametrize("kind", ["redis+sqlite", "mysql"])
def test_50_puts_with_the_same_stale_token_make_one_refresh(kind: str, tmp_path: Path, wechat: FakeWeChat,
                                                            request: pytest.FixtureRequest) -> None:
    settings = storage(kind, tmp_path, request)
    seed(settings, (APP, SECRET))
    with ExitStack() as stack:
        urls = start_cluster(stack, tmp_path, 2, 4, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                             wechat_token_mode="classic", **settings)
        stale = envelope(requests.get(urls[0] + f"/token/wechat/{APP}", timeout=10))["data"]
        wechat.delay(0.3)
        answers = spread(urls, f"/token/wechat/{APP}", 50, "PUT", json={"stale_token": stale})
        assert [a.status_code for a in answers] == [200] * 50
        tokens = {envelope(a)["data"] for a in answers}
        assert len(tokens) == 1 and stale not in tokens
        assert wechat.count(CLASSIC) == 2  # the first GET, and one refresh


def test_scheduler_over_two_instances_of_four_workers_refreshes_each_token_once_per_tick(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    # 3 s ticks, 6 s tokens: margin min(3, 6/2) = 3 s, so every token is
    # due at every tick; eight workers must still refresh it once per tick.
    apps = [(f"wx_s{i}", f"secret-{i}") for i in range(3)]
    for appid, secret in apps:
        wechat.add_app(appid, secret, expires_in=6)
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, *apps)
    with ExitStack() as stack:
        start_cluster(stack, tmp_path, 2, 4, wechat_api_base=wechat.base_url, is_enable_schedule=True,
                      corn_interval=3, **settings)
        time.sleep(10)
    ended = time.time()  # every server has stopped: no tick after this
    for appid, _ in apps:
        times = sorted(c["time"] for c in wechat.find(STABLE, appid=appid))
        # The first instance ticks while the second is still starting, so
        # count from the first call: one tick per 3 s interval after it (a
        # tick may run up to a tenth early), and no two calls for one token
        # in one tick window.
        assert 2 <= len(times) <= int((ended - times[0]) / 2.7) + 1, times
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap > 2.0 for gap in gaps), gaps


@contextmanager
def holder_and_other(tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest,
                     other_workers: int) -> Iterator[tuple[Server, Server]]:
    """Two instances on Redis + SQLite with one app: a one-worker one whose
    worker will hold the lock (and be killed), and another. upstream_timeout
    2 s: lease = 2 * 2 + 1 + 5 = 10 s."""
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, (APP, SECRET))
    with Server(tmp_path, workers=1, threads=4, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                upstream_timeout=2, **settings) as holder, \
            Server(tmp_path, workers=other_workers, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                   upstream_timeout=2, **settings) as other:
        yield holder, other


def test_worker_killed_while_holding_the_lock_frees_it_after_the_lease(tmp_path: Path, wechat: FakeWeChat,
                                                                       request: pytest.FixtureRequest) -> None:
    with holder_and_other(tmp_path, wechat, request, other_workers=2) as (holder, other):
        wechat.delay(1.8)  # slow, but inside the 2 s timeout
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.get, holder.base_url + f"/token/wechat/{APP}", timeout=30)
            time.sleep(0.8)  # the worker holds the lock and waits on the slow platform
            killed_at = time.monotonic()
            for pid in holder.worker_pids():
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(requests.RequestException):
                pending.result()
        wechat.delay(0)
        # Inside the lease the lock is still taken: a request waits, then gives up.
        busy = requests.get(other.base_url + f"/token/wechat/{APP}", timeout=30)
        assert busy.status_code == 503 and "timed out waiting" in envelope(busy)["error"]
        calls_before = len(wechat.find(STABLE))  # the killed worker's call has been answered by now
        time.sleep(max(0.0, 10.5 - (time.monotonic() - killed_at)))
        answer = requests.get(other.base_url + f"/token/wechat/{APP}", timeout=30)
        assert answer.status_code == 200, other.log()
        assert wechat.is_valid(envelope(answer)["data"])
        assert len(wechat.find(STABLE)) == calls_before + 1


def test_put_with_a_stale_token_never_answers_that_token_after_the_holder_died(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    with holder_and_other(tmp_path, wechat, request, other_workers=1) as (holder, other):
        url = f"/token/wechat/{APP}"
        stale = envelope(requests.get(holder.base_url + url, timeout=10))["data"]
        wechat.delay(1.8)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.put, holder.base_url + url, json={"stale_token": stale}, timeout=30)
            time.sleep(0.8)  # the holder has the lock and waits on the platform
            for pid in holder.worker_pids():
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(requests.RequestException):
                pending.result()
        wechat.delay(0)
        # The lease outlives the wait: the caller that reported `stale` gets
        # a 503 to retry, not `stale` back as if it were new.
        answer = requests.put(other.base_url + url, json={"stale_token": stale}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert envelope(answer)["data"] is None and int(answer.headers["Retry-After"]) >= 1
        time.sleep(int(answer.headers["Retry-After"]) + 0.5)
        retried = requests.put(other.base_url + url, json={"stale_token": stale}, timeout=30)
        assert retried.status_code == 200, other.log()
        assert envelope(retried)["data"] != stale and wechat.is_valid(envelope(retried)["data"])


def test_redis_killed_mid_run_keeps_serving_and_is_used_again(tmp_path: Path, wechat: FakeWeChat) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(redis_dir)]
    redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis as redis_lib
        client = redis_lib.Redis(port=port, decode_responses=True)
        wait_ping(client)
        settings = {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_host": "127.0.0.1",
                    "redis_port": port}
        seed(settings, (APP, SECRET))
        with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                      local_cache_ttl=1, **settings) as server:
            url = f"{server.base_url}/token/wechat/{APP}"
            first = envelope(requests.get(url, timeout=10))["data"]
            assert client.get(f"wechat_{APP}") == first
            redis_proc.kill()
            redis_proc.wait(timeout=10)
            served = []
            started = time.monotonic()
            while time.monotonic() - started < 3:  # past local_cache_ttl: memory alone is not enough
                answer = requests.get(url, timeout=10)
                assert answer.status_code == 200, server.log()
                served.append(envelope(answer)["data"])
                time.sleep(0.05)
            assert all(wechat.is_valid(t) for t in served)
            warnings = server.log().count("redis unavailable, carrying on without it")
            assert 1 <= warnings <= 2, server.log()  # once per worker per interval, not per request
            # Restarted (empty): used again and back-filled on the next lookups.
            redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            client = redis_lib.Redis(port=port, decode_responses=True)
            wait_ping(client)
            deadline = time.monotonic() + 10
            while client.get(f"wechat_{APP}") is None and time.monotonic() < deadline:
                assert requests.get(url, timeout=10).status_code == 200
                time.sleep(0.2)
            assert client.get(f"wechat_{APP}") == served[-1]
    finally:
        redis_proc.kill()
        redis_proc.wait(timeout=10)


def test_platform_failing_twice_then_recovering_refreshes_once_serving_the_old_token(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    # 8 s tokens, margin min(300, 4) = 4 s: after 4 s the token is inside its margin but valid.
    wechat.add_app("wx_m", "m-secret", expires_in=8)
    settings = storage("sqlite", tmp_path, request)
    seed(settings, ("wx_m", "m-secret"))
    with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                  **settings) as server:
        url = f"{server.base_url}/token/wechat/wx_m"
        old = envelope(requests.get(url, timeout=10))["data"]
        time.sleep(4.2)
        wechat.fail_next(2, status=500)
        wechat.delay(0.3)
        answers = spread([server.base_url], "/token/wechat/wx_m", 30)
        assert [a.status_code for a in answers] == [200] * 30, server.log()
        served = [envelope(a)["data"] for a in answers]
        assert old in served  # served while the refresh was retrying
        new = envelope(requests.get(url, timeout=10))["data"]
        assert new != old and wechat.is_valid(new)
        successes = [c for c in wechat.find(STABLE, appid="wx_m") if c["status"] == 200]
        assert len(successes) == 2  # the first fetch and one refresh
        assert len(wechat.find(STABLE, appid="wx_m")) == 4


def test_rejected_secret_is_called_once_and_cooldown_is_respected(tmp_path: Path, wechat: FakeWeChat,
                                                                  request: pytest.FixtureRequest) -> None:
    settings = storage("mysql", tmp_path, request)
    seed(settings, (APP, "wrong-secret"))
    with Server(tmp_path, workers=4, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                  failure_cooldown=2, **settings) as server:
        answers = spread([server.base_url], f"/token/wechat/{APP}", 20)
        assert {a.status_code for a in answers} == {502}
        assert wechat.count(STABLE) == 1  # no retry, and the other workers rest too
        assert all("40125" in envelope(a)["error"] for a in answers)
        assert "wrong-secret" not in "".join(a.text for a in answers)
        resting = [a for a in answers if "Retry-After" in a.headers]
        assert resting and all(1 <= int(a.headers["Retry-After"]) <= 2 for a in resting)
        time.sleep(2.1)
        assert requests.get(server.base_url + f"/token/wechat/{APP}", timeout=10).status_code == 502
        assert wechat.count(STABLE) == 2
