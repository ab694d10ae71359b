"""Feishu store apps under the shipped server, two instances of two workers
on one Redis (a private one: a test here empties it) and one SQL database,
against the fake Feishu over HTTP: a cold app token and a cold tenant token
each made once for the whole deployment, the scheduler refreshing tenant
tokens, and a Redis that loses everything losing no ticket and no tenant."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_binary
from tests.e2e.isv_cluster import Family, flushall
from tests.e2e.test_coherence import private_redis  # noqa: F401 - a fixture
from tests.e2e.test_workers import envelope
from tests.fakes.feishu import APP, TENANT
from tests.fakes.feishu_store import APP_TOKEN_PATH, RESEND_PATH, TENANT_TOKEN_PATH, FakeFeishuStore
from tests.integration.test_feishu_store import (
    APP_ID,
    ENCRYPT_KEY,
    SECRET,
    TENANT_APPID,
    TENANT_KEY,
    VTOKEN,
    store_secret,
)

FEISHU = Family(api_base="feishu_api_base", platform="feishu_store", key=APP_ID, secret=store_secret(),
                path=f"/token/feishu_tenant/{TENANT_APPID}")


@pytest.fixture
def fake() -> Iterator[FakeFeishuStore]:
    with FakeFeishuStore() as platform:
        platform.add_store_app(APP_ID, SECRET, encrypt_key=ENCRYPT_KEY, verification_token=VTOKEN)
        yield platform


def test_200_cold_gets_over_two_instances_make_one_app_token_and_one_tenant_token_call(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    settings = FEISHU.settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = FEISHU.deploy(stack, fake, settings, tmp_path)
        deployment.onboard(lambda: fake.install(APP_ID, TENANT_KEY))
        fake.clear_calls()
        fake.delay(0.3)  # a slow platform widens the race
        answers = deployment.cold_gets(200)
        assert fake.is_valid(deployment.one_token(answers), TENANT)
        assert fake.count(APP_TOKEN_PATH) == 1, deployment.logs()
        assert fake.count(TENANT_TOKEN_PATH) == 1, deployment.logs()


def test_200_cold_gets_without_a_ticket_ask_feishu_to_resend_once(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    settings = FEISHU.settings(tmp_path, private_redis)
    fake.resend_pushes = False
    with ExitStack() as stack:
        deployment = FEISHU.deploy(stack, fake, settings, tmp_path)
        answers = deployment.cold_gets(200, path=f"/token/feishu_store/{APP_ID}")
        assert {a.status_code for a in answers} == {503}, deployment.logs()
        assert fake.count(RESEND_PATH) == 1 and fake.count(APP_TOKEN_PATH) == 0


def test_redis_flushall_loses_no_ticket_and_no_tenant(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    redis_cli = require_binary("redis-cli", "redis-tools")
    settings = FEISHU.settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = FEISHU.deploy(stack, fake, settings, tmp_path)
        deployment.onboard(lambda: fake.install(APP_ID, TENANT_KEY))
        before = envelope(deployment.get(1))["data"]
        assert before == fake.current_token(TENANT, TENANT_APPID)
    flushall(redis_cli, private_redis)
    fake.invalidate(before)  # and the tenant's token died meanwhile: a new one must be made
    fake.invalidate(fake.current_token(APP, APP_ID) or "")
    with ExitStack() as stack:  # new workers: nothing in memory either
        deployment = FEISHU.deploy(stack, fake, settings, tmp_path)
        answers = deployment.one_get_each()
        after = deployment.one_token(answers)
        assert after != before and fake.is_valid(after, TENANT)
    # No new push needed: the app token was made again from the ticket in
    # SQL, the tenant from its record in SQL.
    assert fake.count(RESEND_PATH) == 0
    tenants = deployment.container().callbacks.grants.list("feishu_tenant", APP_ID)
    assert [g.account for g in tenants] == [TENANT_KEY]


def test_the_scheduler_refreshes_tenant_tokens_once_per_tick(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    # 8 s tokens and 2 s ticks; the 30-minute rule scaled down to 4 s: a
    # refresh inside a token's last 4 s gets a new one.
    fake.token_life_s = 8
    fake.rotate_before_s = 4
    settings = FEISHU.settings(tmp_path, private_redis)
    with FEISHU.scheduled(fake, settings, tmp_path) as deployment:
        deployment.onboard(lambda: fake.install(APP_ID, TENANT_KEY))
        first = envelope(deployment.get(0))["data"]
        deployment.scheduled_calls(TENANT_TOKEN_PATH, at_least=2)  # every later tenant token call
        token = deployment.token()
        assert fake.is_valid(token, TENANT) and token != first  # the first died at 8 s
