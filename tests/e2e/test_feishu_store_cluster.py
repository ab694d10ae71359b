"""Feishu store apps under the shipped server, two instances of two workers
on one Redis (a private one: a test here empties it) and one SQL database,
against the fake Feishu over HTTP: a cold app token and a cold tenant token
each made once for the whole deployment, the scheduler refreshing tenant
tokens, and a Redis that loses everything losing no ticket and no tenant."""

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

from pighand_token.app import create_app
from tests.conftest import Server, require_binary
from tests.e2e.test_coherence import private_redis  # noqa: F401 - a fixture
from tests.e2e.test_workers import envelope, seed
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

PATH = f"/token/feishu_tenant/{TENANT_APPID}"
COMMON: dict[str, Any] = {"is_enable_schedule": False, "local_cache_ttl": 30, "log_level": "info"}


@dataclass
class Deployment:
    fake: FakeFeishuStore
    settings: dict[str, Any]
    servers: list[Server]

    @property
    def urls(self) -> list[str]:
        return [s.base_url for s in self.servers]

    def logs(self) -> str:
        return "\n".join(s.log()[-3000:] for s in self.servers)

    def tenants(self) -> list[str]:
        app = create_app(overrides={**self.settings, "feishu_api_base": self.fake.base_url,
                                    "is_enable_schedule": False, "auth_required": False})
        return [g.account for g in app.extensions["pighand"].callbacks.grants.list("feishu_tenant", APP_ID)]


@pytest.fixture
def fake() -> Iterator[FakeFeishuStore]:
    with FakeFeishuStore() as platform:
        platform.add_store_app(APP_ID, SECRET, encrypt_key=ENCRYPT_KEY, verification_token=VTOKEN)
        yield platform


def start(stack: ExitStack, fake: FakeFeishuStore, settings: dict[str, Any], tmp_path: Path,
          **extra: Any) -> list[Server]:
    options = {**COMMON, **extra}
    servers = [stack.enter_context(Server(tmp_path, workers=2, feishu_api_base=fake.base_url, **options,
                                          **settings))
               for _ in range(2)]
    fake.set_callback_url(APP_ID, f"{servers[0].base_url}/callback/feishu_store/{APP_ID}")
    return servers


def redis_settings(tmp_path: Path, redis: dict[str, Any]) -> dict[str, Any]:
    settings = {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_host": "127.0.0.1",
                "redis_port": redis["port"]}
    seed(settings, ("feishu_store", APP_ID, store_secret()))
    return settings


def test_200_cold_gets_over_two_instances_make_one_app_token_and_one_tenant_token_call(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    settings = redis_settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = Deployment(fake, settings, start(stack, fake, settings, tmp_path))
        assert fake.push_ticket(APP_ID).ok, deployment.logs()
        assert fake.install(APP_ID, TENANT_KEY).ok, deployment.logs()
        fake.clear_calls()
        fake.delay(0.3)  # a slow platform widens the race
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda i: requests.get(deployment.urls[i % 2] + PATH, timeout=30),
                                    range(200)))
        assert [a.status_code for a in answers] == [200] * 200, deployment.logs()
        tokens = {envelope(a)["data"] for a in answers}
        assert len(tokens) == 1 and fake.is_valid(tokens.pop(), TENANT)
        assert fake.count(APP_TOKEN_PATH) == 1, deployment.logs()
        assert fake.count(TENANT_TOKEN_PATH) == 1, deployment.logs()


def test_200_cold_gets_without_a_ticket_ask_feishu_to_resend_once(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    settings = redis_settings(tmp_path, private_redis)
    fake.resend_pushes = False
    with ExitStack() as stack:
        deployment = Deployment(fake, settings, start(stack, fake, settings, tmp_path))
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(
                lambda i: requests.get(f"{deployment.urls[i % 2]}/token/feishu_store/{APP_ID}", timeout=30),
                range(200)))
        assert {a.status_code for a in answers} == {503}, deployment.logs()
        assert fake.count(RESEND_PATH) == 1 and fake.count(APP_TOKEN_PATH) == 0


def test_redis_flushall_loses_no_ticket_and_no_tenant(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    redis_cli = require_binary("redis-cli", "redis-tools")
    settings = redis_settings(tmp_path, private_redis)
    with ExitStack() as stack:
        deployment = Deployment(fake, settings, start(stack, fake, settings, tmp_path))
        assert fake.push_ticket(APP_ID).ok and fake.install(APP_ID, TENANT_KEY).ok
        before = envelope(requests.get(deployment.urls[1] + PATH, timeout=10))["data"]
        assert before == fake.current_token(TENANT, TENANT_APPID)
    flushed = subprocess.run([redis_cli, "-p", str(private_redis["port"]), "FLUSHALL"], capture_output=True,
                             text=True, timeout=10)
    assert flushed.returncode == 0 and flushed.stdout.strip() == "OK", flushed
    fake.invalidate(before)  # and the tenant's token died meanwhile: a new one must be made
    fake.invalidate(fake.current_token(APP, APP_ID) or "")
    with ExitStack() as stack:  # new workers: nothing in memory either
        deployment = Deployment(fake, settings, start(stack, fake, settings, tmp_path))
        answers = [requests.get(url + PATH, timeout=15) for url in deployment.urls]
        assert [a.status_code for a in answers] == [200, 200], deployment.logs()
        after = {envelope(a)["data"] for a in answers}
        assert len(after) == 1 and before not in after and fake.is_valid(after.pop(), TENANT)
    # No new push needed: the app token was made again from the ticket in
    # SQL, the tenant from its record in SQL.
    assert fake.count(RESEND_PATH) == 0
    assert deployment.tenants() == [TENANT_KEY]


def test_the_scheduler_refreshes_tenant_tokens_once_per_tick(
        fake: FakeFeishuStore, tmp_path: Path, private_redis: dict[str, Any]) -> None:  # noqa: F811
    # 8 s tokens and 2 s ticks; the 30-minute rule scaled down to 4 s: a
    # refresh inside a token's last 4 s gets a new one.
    fake.token_life_s = 8
    fake.rotate_before_s = 4
    settings = redis_settings(tmp_path, private_redis)
    with Server(tmp_path, workers=2, feishu_api_base=fake.base_url, is_enable_schedule=True, corn_interval=2,
                **settings) as server:
        fake.set_callback_url(APP_ID, f"{server.base_url}/callback/feishu_store/{APP_ID}")
        assert fake.push_ticket(APP_ID).ok and fake.install(APP_ID, TENANT_KEY).ok
        first = envelope(requests.get(server.base_url + PATH, timeout=10))["data"]
        time.sleep(9)  # no requests: every later tenant token call is the scheduler's
        times = [c["time"] for c in fake.find(TENANT_TOKEN_PATH)]
        assert len(times) >= 2, server.log()
        # One worker per tick (two acting alone would call twice per tick).
        assert all(b - a > 1.5 for a, b in zip(times, times[1:], strict=False)), (times, server.log())
        answer = requests.get(server.base_url + PATH, timeout=10)
        assert answer.status_code == 200, server.log()
        token = envelope(answer)["data"]
        assert fake.is_valid(token, TENANT) and token != first  # the first died at 8 s
