"""Every worker of every instance serves what a PUT wrote, soon after: the
shipped server's workers drop a replaced token from their memory when the
write is announced (Redis) or seen (SQL polling), not when local_cache_ttl
runs out. local_cache_ttl is 30 s in these tests, so the TTL cannot be what
makes them pass."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.conftest import Server, free_port
from tests.e2e.test_workers import envelope, seed, storage
from tests.fakes.wechat import FakeWeChat
from tests.integration.test_redis_connections import wait_ping

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"
PATH = f"/token/wechat/{APP}"
# Classic mode: every PUT gets a new token (the replaced one keeps working
# on the platform for 5 minutes, so only these tests can tell it is old).
COMMON: dict[str, Any] = {"is_enable_schedule": False, "wechat_token_mode": "classic", "local_cache_ttl": 30,
                          "refresh_limit_per_minute": 100_000}
FRESH_GETS = 6  # per instance and round, each on a new connection, at once: both workers answer some


def fresh_gets(pool: ThreadPoolExecutor, urls: list[str], count: int) -> list[tuple[str, str, str]]:
    """(instance, worker, token) of ``count`` GETs at once per instance, each
    on its own connection. The worker is told apart by the id it gives the
    request (a per-process prefix)."""
    def one(url: str) -> tuple[str, str, str]:
        answer = requests.get(url + PATH, timeout=10, headers={"Connection": "close"})
        assert answer.status_code == 200, answer.text
        return url, answer.headers["X-Request-Id"][:12], envelope(answer)["data"]

    return list(pool.map(one, [url for url in urls for _ in range(count)]))


def put_replacing(url: str, current: str) -> str:
    answer = requests.put(url + PATH, json={"stale_token": current}, timeout=10)
    assert answer.status_code == 200, answer.text
    new = str(envelope(answer)["data"])
    assert new != current
    return new


def put_then_get_rounds(pool: ThreadPoolExecutor, urls: list[str], current: str,
                        rounds: int) -> tuple[int, dict[str, set[str]]]:
    """Rounds of: a PUT replacing ``current`` on one instance (in turn), 100 ms,
    then fresh GETs on every instance. Returns how many GETs answered a
    replaced token, and which workers of each instance answered."""
    workers: dict[str, set[str]] = {url: set() for url in urls}
    old_served = 0
    for round_ in range(rounds):
        new = put_replacing(urls[round_ % len(urls)], current)
        time.sleep(0.1)
        for url, worker, token in fresh_gets(pool, urls, FRESH_GETS):
            workers[url].add(worker)
            old_served += token != new
        current = new
    return old_served, workers


def test_put_on_one_instance_is_served_by_every_worker_of_every_instance_within_100_ms(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, (APP, SECRET))
    with ExitStack() as stack, ThreadPoolExecutor(2 * FRESH_GETS) as pool:
        servers = [stack.enter_context(Server(tmp_path, workers=2, wechat_api_base=wechat.base_url,
                                              log_level="warning", **COMMON, **settings)) for _ in range(2)]
        urls = [s.base_url for s in servers]
        current = envelope(requests.get(urls[0] + PATH, timeout=10))["data"]
        fresh_gets(pool, urls, FRESH_GETS)  # every worker holds the token in its memory
        started = time.monotonic()
        old_served, workers = put_then_get_rounds(pool, urls, current, 80)
        elapsed = time.monotonic() - started
        assert old_served == 0
        assert all(len(seen) == 2 for seen in workers.values()), workers  # both workers of both instances
        assert elapsed < 30
        assert wechat.count("/cgi-bin/token") == 81


def test_without_redis_a_get_one_second_after_a_put_never_sees_the_replaced_token(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    # Before the SQL follower, the other worker's memory served the replaced
    # token for local_cache_ttl (30 s here): about half of these GETs.
    settings = storage("sqlite", tmp_path, request)
    seed(settings, (APP, SECRET))
    with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, log_level="warning", **COMMON,
                **settings) as server, ThreadPoolExecutor(2 * FRESH_GETS) as pool:
        urls = [server.base_url]
        current = envelope(requests.get(server.base_url + PATH, timeout=10))["data"]
        workers: set[str] = set()
        old_served = 0
        for _ in range(4):
            fresh_gets(pool, urls, 2 * FRESH_GETS)  # both workers hold the current token
            new = put_replacing(server.base_url, current)
            time.sleep(1.0)
            for _, worker, token in fresh_gets(pool, urls, 2 * FRESH_GETS):
                workers.add(worker)
                old_served += token != new
            current = new
        assert old_served == 0
        assert len(workers) == 2, workers


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A redis-server of this test's own, which it may kill and restart."""
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(folder)]
    state: dict[str, Any] = {"port": port}

    def start() -> None:
        state["proc"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ping(redis.Redis(port=port))

    def kill() -> None:
        state["proc"].send_signal(signal.SIGKILL)
        state["proc"].wait(timeout=10)

    state.update(start=start, kill=kill)
    start()
    try:
        yield state
    finally:
        state["proc"].kill()
        state["proc"].wait(timeout=10)


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_after_redis_restarts_no_worker_serves_a_token_replaced_while_it_was_down(
        tmp_path: Path, wechat: FakeWeChat, private_redis: dict[str, Any]) -> None:
    settings = {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_host": "127.0.0.1",
                "redis_port": private_redis["port"]}
    seed(settings, (APP, SECRET))
    with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, log_level="info", **COMMON,
                **settings) as server, ThreadPoolExecutor(2 * FRESH_GETS) as pool:
        urls = [server.base_url]
        old = envelope(requests.get(server.base_url + PATH, timeout=10))["data"]
        assert {t for _, _, t in fresh_gets(pool, urls, 2 * FRESH_GETS)} == {old}

        # Redis dies; a PUT meanwhile reaches one worker (the token goes to
        # SQL), and its announcement cannot reach the other.
        private_redis["kill"]()
        new = put_replacing(server.base_url, old)
        wait_for(lambda: server.log().count("redis token changes lost") >= 2, 10, "both workers to lose Redis")
        private_redis["start"]()
        # Each worker resubscribes and empties its memory: the token it held
        # from before the outage is no longer served, long before its TTL.
        wait_for(lambda: server.log().count("redis token changes: following again") >= 2, 10,
                 "both workers to resubscribe")
        assert server.log().count("redis token changes lost") == 2  # once per worker per outage
        served = fresh_gets(pool, urls, 4 * FRESH_GETS)
        assert {t for _, _, t in served} == {new}, server.log()
        assert len({w for _, w, _ in served}) == 2

        # Only the subscriptions drop (Redis keeps its data) and a PUT lands
        # before they are back: the clear on resubscribe covers it too. (After
        # the pause each worker takes from Redis once it failed, 2 s, so the
        # PUT is written to Redis again, not to SQL alone.)
        time.sleep(2.5)
        redis.Redis(port=private_redis["port"]).client_kill_filter(_type="pubsub")
        newer = put_replacing(server.base_url, new)
        time.sleep(1.0)
        served = fresh_gets(pool, urls, 4 * FRESH_GETS)
        assert {t for _, _, t in served} == {newer}, server.log()
