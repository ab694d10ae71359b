"""WeCom suites under the shipped server, two instances of two workers on one
Redis (a private one: a test here empties it) and one SQL database, against
the fake WeCom over HTTP: a corp's cold token made once for the whole
deployment, an uninstall seen by every worker at once, and a Redis that
loses everything losing no ticket and no permanent code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.e2e.isv_cluster import Deployment, Family, flushall
from tests.e2e.test_coherence import private_redis  # noqa: F401 - a fixture
from tests.e2e.test_workers import envelope
from tests.fakes.wecom_suite import CORP, CORP_TOKEN_PATH, PERMANENT_CODE_PATH, SUITE_TOKEN_PATH, FakeWeComSuite
from tests.integration.test_wecom_isv import (
    AES_KEY,
    CB_TOKEN,
    CORP_APPID,
    CORP_OWNER,
    CORPID,
    SUITE_ID,
    SUITE_SECRET,
    suite_secret,
)

WECOM = Family(api_base="wecom_api_base", platform="wecom_suite", key=SUITE_ID, secret=suite_secret(),
               path=f"/token/wecom_corp/{CORP_APPID}")



@pytest.fixture
def fake() -> Iterator[FakeWeComSuite]:
    with FakeWeComSuite() as platform:
        platform.add_suite(SUITE_ID, SUITE_SECRET, token=CB_TOKEN, encoding_aes_key=AES_KEY)
        yield platform


@pytest.fixture
def deployment(fake: FakeWeComSuite, tmp_path: Path, private_redis: dict[str, Any]  # noqa: F811
               ) -> Iterator[Deployment[FakeWeComSuite]]:
    yield from WECOM.deployed(fake, tmp_path, private_redis)


def test_200_cold_gets_for_one_corp_over_two_instances_make_one_get_corp_token_call(
        deployment: Deployment[FakeWeComSuite]) -> None:
    fake = deployment.fake
    deployment.onboard(lambda: fake.authorize(SUITE_ID, CORPID))
    # The token the install came with is dropped everywhere (as at its
    # expiry): the permanent code is all that is left.
    deployment.container().service.forget("wecom_corp", CORP_APPID)
    time.sleep(0.5)
    fake.clear_calls()
    fake.delay(0.3)  # a slow platform widens the race
    answers = deployment.cold_gets(200)
    assert fake.is_valid(deployment.one_token(answers))
    assert fake.count(CORP_TOKEN_PATH) == 1, deployment.logs()
    assert fake.count(SUITE_TOKEN_PATH) == 0  # the suite token was still good


def test_cancel_auth_is_404_on_every_worker_of_both_instances_within_5_s(
        deployment: Deployment[FakeWeComSuite]) -> None:
    fake = deployment.fake
    deployment.onboard(lambda: fake.authorize(SUITE_ID, CORPID))
    took, workers = deployment.withdraw(lambda: fake.cancel_auth(SUITE_ID, CORPID))
    assert took < 5
    assert all(len(seen) == 2 for seen in workers.values()), workers
    assert fake.count(CORP_TOKEN_PATH) == 0  # 404 before any platform call


def test_redis_flushall_loses_no_ticket_and_no_permanent_code(
        fake: FakeWeComSuite, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    redis_cli = require_binary("redis-cli", "redis-tools")
    settings = WECOM.settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = WECOM.deploy(stack, fake, settings, tmp_path)
        deployment.onboard(lambda: fake.authorize(SUITE_ID, CORPID))
        before = envelope(deployment.get(1))["data"]
        assert before == fake.current_token(CORP, CORP_OWNER)
    flushall(redis_cli, private_redis)
    fake.invalidate(before)  # and the corp's token died meanwhile: a new one must be made
    with ExitStack() as stack:  # new workers: nothing in memory either
        deployment = WECOM.deploy(stack, fake, settings, tmp_path)
        answers = deployment.one_get_each()
        after = deployment.one_token(answers)
        assert after != before and fake.is_valid(after)
    # No new install: the suite token was made again from the ticket in SQL,
    # the corp token from the permanent code in SQL.
    assert fake.count(PERMANENT_CODE_PATH) == 1
    assert fake.count(SUITE_TOKEN_PATH) == 2
    assert fake.count(CORP_TOKEN_PATH) == 1


def test_the_scheduler_refreshes_corp_tokens_once_per_tick(
        fake: FakeWeComSuite, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    # 8 s tokens and 2 s ticks: a token is due from 4 s before it dies.
    fake.token_life_s = 8
    settings = WECOM.settings(tmp_path, private_redis)
    with WECOM.scheduled(fake, settings, tmp_path) as deployment:
        deployment.onboard(lambda: fake.authorize(SUITE_ID, CORPID))
        installed = fake.current_token(CORP, CORP_OWNER)
        deployment.scheduled_calls(CORP_TOKEN_PATH, at_least=1)  # every get_corp_token call
        token = deployment.token()
        assert fake.is_valid(token) and token != installed  # the installed one died at 8 s
