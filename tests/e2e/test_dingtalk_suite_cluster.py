"""DingTalk suites under the shipped server, two instances of two workers on
one Redis (a private one: a test here empties it) and one SQL database,
against the fake DingTalk over HTTP: a corp's cold token made once for the
whole deployment, a removal seen by every worker at once, a Redis that loses
everything losing no ticket and no corp, and the scheduler's refreshes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Server, require_binary
from tests.e2e.test_coherence import private_redis  # noqa: F401 - a fixture
from tests.e2e.test_workers import envelope, seed
from tests.fakes.dingtalk_suite import CORP, CORP_TOKEN_PATH, SUITE_TOKEN_PATH, FakeDingTalkSuite
from tests.integration.test_dingtalk_suite import (
    AES_KEY,
    CALLBACK,
    CB_TOKEN,
    CORP_APPID,
    CORP_ID,
    CORP_OWNER,
    SUITE_KEY,
    SUITE_SECRET,
    suite_secret,
)

PATH = f"/token/dingtalk_corp/{CORP_APPID}"
# 30 s: a worker that drops the corp's token within 5 s did so because it
# was told, not because its memory ran out.
COMMON: dict[str, Any] = {"is_enable_schedule": False, "local_cache_ttl": 30, "log_level": "info"}


@dataclass
class Deployment:
    fake: FakeDingTalkSuite
    settings: dict[str, Any]
    servers: list[Server]

    @property
    def urls(self) -> list[str]:
        return [s.base_url for s in self.servers]

    def logs(self) -> str:
        return "\n".join(s.log()[-3000:] for s in self.servers)

    def authorize(self) -> None:
        assert self.fake.push_ticket(SUITE_KEY).ok, self.logs()
        assert self.fake.authorize(SUITE_KEY, CORP_ID).ok, self.logs()

    def fresh_gets(self, pool: ThreadPoolExecutor, count: int) -> list[tuple[str, str, int]]:
        """(instance, worker, status) of ``count`` GETs at once per instance,
        each on its own connection; the worker is told apart by its request ids."""
        def one(url: str) -> tuple[str, str, int]:
            answer = requests.get(url + PATH, timeout=10, headers={"Connection": "close"})
            return url, answer.headers["X-Request-Id"][:12], answer.status_code

        return list(pool.map(one, [url for url in self.urls for _ in range(count)]))


@pytest.fixture
def fake() -> Iterator[FakeDingTalkSuite]:
    with FakeDingTalkSuite() as platform:
        platform.add_suite(SUITE_KEY, SUITE_SECRET, token=CB_TOKEN, aes_key=AES_KEY)
        yield platform


def start(stack: ExitStack, fake: FakeDingTalkSuite, settings: dict[str, Any], tmp_path: Path) -> list[Server]:
    servers = [stack.enter_context(Server(tmp_path, workers=2, dingtalk_api_base=fake.base_url, **COMMON,
                                          **settings)) for _ in range(2)]
    fake.set_callback_url(SUITE_KEY, servers[0].base_url + CALLBACK)
    return servers


def redis_settings(tmp_path: Path, private_redis: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    settings = {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_host": "127.0.0.1",
                "redis_port": private_redis["port"]}
    seed(settings, ("dingtalk_suite", SUITE_KEY, suite_secret()))
    return settings


@pytest.fixture
def deployment(fake: FakeDingTalkSuite, tmp_path: Path, private_redis: dict[str, Any]  # noqa: F811
               ) -> Iterator[Deployment]:
    settings = redis_settings(tmp_path, private_redis)
    with ExitStack() as stack:
        yield Deployment(fake, settings, start(stack, fake, settings, tmp_path))


def test_200_cold_gets_for_one_corp_over_two_instances_make_one_corp_access_token_call(
        deployment: Deployment) -> None:
    fake = deployment.fake
    deployment.authorize()  # the corp is recorded; no token is made before it is asked for
    assert fake.count(CORP_TOKEN_PATH) == 0
    fake.delay(0.3)  # a slow platform widens the race
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(lambda i: requests.get(deployment.urls[i % 2] + PATH, timeout=30), range(200)))
    assert [a.status_code for a in answers] == [200] * 200, deployment.logs()
    tokens = {envelope(a)["data"] for a in answers}
    assert len(tokens) == 1 and fake.is_valid(tokens.pop())
    assert fake.count(CORP_TOKEN_PATH) == 1, deployment.logs()
    assert fake.count(SUITE_TOKEN_PATH) == 0  # a corp token takes the ticket, not the suite token


def test_suite_relieve_is_404_on_every_worker_of_both_instances_within_5_s(deployment: Deployment) -> None:
    fake = deployment.fake
    deployment.authorize()
    with ThreadPoolExecutor(24) as pool:
        warm = deployment.fresh_gets(pool, 12)
        assert {status for _, _, status in warm} == {200}, deployment.logs()
        assert fake.relieve(SUITE_KEY, CORP_ID).ok, deployment.logs()
        relieved_at = time.monotonic()
        while True:
            answers = deployment.fresh_gets(pool, 12)
            if {status for _, _, status in answers} == {404}:
                break
            assert time.monotonic() - relieved_at < 5, answers
        took = time.monotonic() - relieved_at
        workers: dict[str, set[str]] = {url: set() for url in deployment.urls}
        for _ in range(3):
            for url, worker, status in deployment.fresh_gets(pool, 12):
                assert status == 404
                workers[url].add(worker)
    assert took < 5
    assert all(len(seen) == 2 for seen in workers.values()), workers
    assert fake.count(CORP_TOKEN_PATH) == 1  # the warm-up's; 404 before any platform call since


def test_redis_flushall_loses_no_ticket_and_no_corp(
        fake: FakeDingTalkSuite, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    redis_cli = require_binary("redis-cli", "redis-tools")
    settings = redis_settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = Deployment(fake, settings, start(stack, fake, settings, tmp_path))
        deployment.authorize()
        before = envelope(requests.get(deployment.urls[1] + PATH, timeout=10))["data"]
        assert before == fake.current_token(CORP, CORP_OWNER)
    flushed = subprocess.run([redis_cli, "-p", str(private_redis["port"]), "FLUSHALL"], capture_output=True,
                             text=True, timeout=10)
    assert flushed.returncode == 0 and flushed.stdout.strip() == "OK", flushed
    fake.invalidate(before)  # and the corp's token died meanwhile: a new one must be made
    with ExitStack() as stack:  # new workers: nothing in memory either
        deployment = Deployment(fake, settings, start(stack, fake, settings, tmp_path))
        answers = [requests.get(url + PATH, timeout=15) for url in deployment.urls]
        assert [a.status_code for a in answers] == [200, 200], deployment.logs()
        after = {envelope(a)["data"] for a in answers}
        assert len(after) == 1 and before not in after and fake.is_valid(after.pop())
        suite = requests.get(deployment.urls[0] + f"/token/dingtalk_suite/{SUITE_KEY}", timeout=15)
        assert suite.status_code == 200, deployment.logs()
    # No new push: both tokens were made from the ticket and the corp kept in SQL.
    assert fake.count(CORP_TOKEN_PATH) == 2
    assert {c["suite_ticket"] for c in fake.find(CORP_TOKEN_PATH)} == {fake.current_ticket(SUITE_KEY)}
    assert len([d for d in fake.deliveries if d.event_type == "suite_ticket"]) == 1


def test_the_scheduler_refreshes_corp_tokens_once_per_tick(
        fake: FakeDingTalkSuite, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    # 8 s tokens and 2 s ticks: a token is due from 4 s before it dies.
    fake.token_life_s = 8
    settings = redis_settings(tmp_path, private_redis)
    with Server(tmp_path, workers=2, dingtalk_api_base=fake.base_url, is_enable_schedule=True, corn_interval=2,
                **settings) as server:
        fake.set_callback_url(SUITE_KEY, server.base_url + CALLBACK)
        Deployment(fake, settings, [server]).authorize()
        time.sleep(9)  # no requests: every corpAccessToken call is the scheduler's
        times = [c["time"] for c in fake.find(CORP_TOKEN_PATH)]
        assert len(times) >= 2, server.log()
        # One worker per tick (two acting alone would call twice per tick).
        assert all(b - a > 1.5 for a, b in zip(times, times[1:], strict=False)), (times, server.log())
        answer = requests.get(server.base_url + PATH, timeout=10)
        assert answer.status_code == 200, server.log()
        token = envelope(answer)["data"]
        # DingTalk hands back the same token, its life extended by each refresh:
        # alive 9 s after it was first made only because the scheduler refreshed it.
        assert fake.is_valid(token) and fake.issued(CORP) == [token]
