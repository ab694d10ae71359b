"""DingTalk suites under the shipped server, two instances of two workers on
one Redis (a private one: a test here empties it) and one SQL database,
against the fake DingTalk over HTTP: a corp's cold token made once for the
whole deployment, a removal seen by every worker at once, a Redis that loses
everything losing no ticket and no corp, and the scheduler's refreshes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.e2e.isv_cluster import Deployment, Family, flushall
from tests.e2e.test_coherence import private_redis  # noqa: F401 - a fixture
from tests.e2e.test_workers import envelope
from tests.fakes.dingtalk_suite import CORP, CORP_TOKEN_PATH, SUITE_TOKEN_PATH, FakeDingTalkSuite
from tests.integration.test_dingtalk_suite import (
    AES_KEY,
    CB_TOKEN,
    CORP_APPID,
    CORP_ID,
    CORP_OWNER,
    SUITE_KEY,
    SUITE_SECRET,
    suite_secret,
)

DINGTALK = Family(api_base="dingtalk_api_base", platform="dingtalk_suite", key=SUITE_KEY, secret=suite_secret(),
                  path=f"/token/dingtalk_corp/{CORP_APPID}")



@pytest.fixture
def fake() -> Iterator[FakeDingTalkSuite]:
    with FakeDingTalkSuite() as platform:
        platform.add_suite(SUITE_KEY, SUITE_SECRET, token=CB_TOKEN, aes_key=AES_KEY)
        yield platform


@pytest.fixture
def deployment(fake: FakeDingTalkSuite, tmp_path: Path, private_redis: dict[str, Any]  # noqa: F811
               ) -> Iterator[Deployment[FakeDingTalkSuite]]:
    yield from DINGTALK.deployed(fake, tmp_path, private_redis)


def test_200_cold_gets_for_one_corp_over_two_instances_make_one_corp_access_token_call(
        deployment: Deployment[FakeDingTalkSuite]) -> None:
    fake = deployment.fake
    # The corp is recorded; no token is made before it is asked for.
    deployment.onboard(lambda: fake.authorize(SUITE_KEY, CORP_ID))
    assert fake.count(CORP_TOKEN_PATH) == 0
    fake.delay(0.3)  # a slow platform widens the race
    answers = deployment.cold_gets(200)
    assert fake.is_valid(deployment.one_token(answers))
    assert fake.count(CORP_TOKEN_PATH) == 1, deployment.logs()
    assert fake.count(SUITE_TOKEN_PATH) == 0  # a corp token takes the ticket, not the suite token


def test_suite_relieve_is_404_on_every_worker_of_both_instances_within_5_s(
        deployment: Deployment[FakeDingTalkSuite]) -> None:
    fake = deployment.fake
    deployment.onboard(lambda: fake.authorize(SUITE_KEY, CORP_ID))
    took, workers = deployment.withdraw(lambda: fake.relieve(SUITE_KEY, CORP_ID))
    assert took < 5
    assert all(len(seen) == 2 for seen in workers.values()), workers
    assert fake.count(CORP_TOKEN_PATH) == 1  # the warm-up's; 404 before any platform call since


def test_redis_flushall_loses_no_ticket_and_no_corp(
        fake: FakeDingTalkSuite, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    redis_cli = require_binary("redis-cli", "redis-tools")
    settings = DINGTALK.settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = DINGTALK.deploy(stack, fake, settings, tmp_path)
        deployment.onboard(lambda: fake.authorize(SUITE_KEY, CORP_ID))
        before = envelope(deployment.get(1))["data"]
        assert before == fake.current_token(CORP, CORP_OWNER)
    flushall(redis_cli, private_redis)
    fake.invalidate(before)  # and the corp's token died meanwhile: a new one must be made
    with ExitStack() as stack:  # new workers: nothing in memory either
        deployment = DINGTALK.deploy(stack, fake, settings, tmp_path)
        answers = deployment.one_get_each()
        after = deployment.one_token(answers)
        assert after != before and fake.is_valid(after)
        suite = deployment.get(0, path=f"/token/dingtalk_suite/{SUITE_KEY}", timeout=15)
        assert suite.status_code == 200, deployment.logs()
    # No new push: both tokens were made from the ticket and the corp kept in SQL.
    assert fake.count(CORP_TOKEN_PATH) == 2
    assert {c["suite_ticket"] for c in fake.find(CORP_TOKEN_PATH)} == {fake.current_ticket(SUITE_KEY)}
    assert len([d for d in fake.deliveries if d.event_type == "suite_ticket"]) == 1


def test_the_scheduler_refreshes_corp_tokens_once_per_tick(
        fake: FakeDingTalkSuite, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    # 8 s tokens and 2 s ticks: a token is due from 4 s before it dies.
    fake.token_life_s = 8
    settings = DINGTALK.settings(tmp_path, private_redis)
    with DINGTALK.scheduled(fake, settings, tmp_path) as deployment:
        deployment.onboard(lambda: fake.authorize(SUITE_KEY, CORP_ID))
        deployment.scheduled_calls(CORP_TOKEN_PATH, at_least=2)  # every corpAccessToken call
        token = deployment.token()
        # DingTalk hands back the same token, its life extended by each refresh:
        # alive 9 s after it was first made only because the scheduler refreshed it.
        assert fake.is_valid(token) and fake.issued(CORP) == [token]
