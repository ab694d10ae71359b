"""WeChat Open Platform components under the shipped server: two instances
of two workers each on one MySQL and one Redis, with the fake platform
pushing to them over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from cryptography.fernet import Fernet

from pighand_token.app import create_app
from pighand_token.core.domain import AccountGrant, Credential
from pighand_token.providers.third_party import AppSecrets
from tests.conftest import MYSQL, REDIS, Server, _wait_port, free_port, mysql_rows
from tests.fakes.wechat_open import (
    AUTHORIZER,
    AUTHORIZER_TOKEN_PATH,
    COMPONENT_TOKEN_PATH,
    QUERY_AUTH_PATH,
    START_PUSH_TICKET_PATH,
    FakeWeChatOpen,
)
from tests.integration.test_wechat_open import (
    ACCOUNT,
    AES_KEY,
    APPID,
    AUTHORIZER_URL,
    CALLBACK,
    COMPONENT_URL,
    SECRET,
    TOKEN,
    acknowledged,
    assert_no_secret,
    envelope,
)


@pytest.fixture
def wxopen() -> Iterator[FakeWeChatOpen]:
    with FakeWeChatOpen() as fake:
        fake.add_component(APPID, SECRET, TOKEN, AES_KEY)
        yield fake


class Cluster:
    """Instances of the shipped server sharing MySQL and Redis, the
    component's credential stored once for all."""

    def __init__(self, tmp_path: Path, fake: FakeWeChatOpen, redis_settings: dict[str, Any], database: str) -> None:
        self.tmp_path = tmp_path
        self.fake = fake
        self.settings: dict[str, Any] = {
            "sqlite_path": str(tmp_path / "unused.sqlite3"), "mysql_host": MYSQL["host"],
            "mysql_port": MYSQL["port"], "mysql_database": database, **redis_settings,
            "wechat_api_base": fake.base_url, "is_enable_schedule": False, "upstream_timeout": 5,
            "log_level": "debug", "encryption_key": Fernet.generate_key().decode(), "auth_required": False}
        self.app = create_app(overrides=self.settings)
        self.container = self.app.extensions["pighand"]
        self.container.credentials.add(Credential("wechat_component", APPID,
                                                  AppSecrets(SECRET, TOKEN, AES_KEY).encode()))
        self.servers: list[Server] = []

    def start(self, instances: int = 2, workers: int = 2) -> Cluster:
        for _ in range(instances):
            self.servers.append(Server(self.tmp_path, workers=workers, threads=8, **self.settings).start())
        return self.callback_to(0)

    def callback_to(self, index: int) -> Cluster:
        self.fake.set_callback_url(APPID, self.servers[index].base_url + CALLBACK)
        return self

    def restart(self) -> None:
        self.stop()
        self.servers = []
        self.start(instances=1)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def urls(self, path: str) -> Iterator[str]:
        return cycle([server.base_url + path for server in self.servers])

    def log(self) -> str:
        return "".join(server.log() for server in self.servers)


def authorize(cluster: Cluster) -> str:
    """A ticket and an authorization pushed; the authorizer token served."""
    acknowledged(cluster.fake.push_ticket(APPID))
    acknowledged(cluster.fake.authorize(APPID, ACCOUNT))
    answer = requests.get(cluster.servers[0].base_url + AUTHORIZER_URL, timeout=30)
    assert answer.status_code == 200, answer.text
    return str(envelope(answer)["data"])


@pytest.fixture
def cluster(tmp_path: Path, wxopen: FakeWeChatOpen, mysql_db: str, redis_prefix: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, wxopen, {"redis_host": REDIS["host"], "redis_port": REDIS["port"],
                                      "redis_key_prefix": redis_prefix}, mysql_db).start()
    yield made
    made.stop()


def test_without_a_ticket_every_get_is_503_and_wechat_is_asked_once_a_minute(cluster: Cluster) -> None:
    cluster.fake.set_callback_url(APPID, None)  # the requested push gets lost
    urls = cluster.urls(COMPONENT_URL)
    batch = [next(urls) for _ in range(80)]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda url: requests.get(url, timeout=30), batch))
    assert {a.status_code for a in answers} == {503}, [a.text for a in answers if a.status_code != 503]
    for answer in answers:
        assert "waiting for the platform to push a component_verify_ticket" in envelope(answer)["error"]
        assert 0 < int(answer.headers["Retry-After"]) <= 60
    assert cluster.fake.count(START_PUSH_TICKET_PATH) == 1
    assert cluster.fake.count(COMPONENT_TOKEN_PATH) == 0

    # The platform pushes (to either instance): the token is made from it.
    cluster.callback_to(1)
    acknowledged(cluster.fake.push_ticket(APPID))
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda url: requests.get(url, timeout=30), batch[:40]))
    assert {a.status_code for a in answers} == {200}
    assert len({envelope(a)["data"] for a in answers}) == 1
    assert cluster.fake.count(COMPONENT_TOKEN_PATH) == 1 and cluster.fake.count(START_PUSH_TICKET_PATH) == 1
    assert_no_secret(cluster.log(), cluster.fake)


def test_unauthorized_is_404_on_every_worker_of_both_instances_within_5_s(cluster: Cluster) -> None:
    token = authorize(cluster)
    urls = cluster.urls(AUTHORIZER_URL)
    with ThreadPoolExecutor(16) as pool:  # every worker has served (and keeps) the token
        warm = list(pool.map(lambda _: requests.get(next(urls), timeout=30), range(64)))
    assert {envelope(a)["data"] for a in warm} == {token}
    acknowledged(cluster.fake.unauthorize(APPID, ACCOUNT))
    pushed = time.monotonic()
    while True:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: requests.get(next(urls), timeout=30), range(32)))
        if {a.status_code for a in answers} == {404}:
            break
        assert time.monotonic() - pushed < 5, [a.status_code for a in answers]
        time.sleep(0.1)
    # And it stays so, everywhere.
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: requests.get(next(urls), timeout=30), range(64)))
    assert {a.status_code for a in answers} == {404}
    assert all(token not in a.text for a in answers)
    assert cluster.fake.count(AUTHORIZER_TOKEN_PATH) == 0


def test_200_concurrent_cold_gets_for_one_authorizer_make_one_refresh(cluster: Cluster) -> None:
    # Each refresh hands back a new refresh token and kills the old one: a
    # second call with the old one would be refused (61023).
    cluster.fake.rotate_refresh_tokens = True
    acknowledged(cluster.fake.push_ticket(APPID))
    # The account authorized long ago: its refresh token is stored, no token is.
    push = cluster.fake.authorize(APPID, ACCOUNT, deliver=False)
    ticket = cluster.fake.current_ticket(APPID)
    component = requests.post(cluster.fake.url(COMPONENT_TOKEN_PATH), timeout=5, json={
        "component_appid": APPID, "component_appsecret": SECRET, "component_verify_ticket": ticket}).json()
    info = requests.post(cluster.fake.url(QUERY_AUTH_PATH), timeout=5,
                         params={"component_access_token": component["component_access_token"]},
                         json={"component_appid": APPID,
                               "authorization_code": push.message["AuthorizationCode"]}).json()
    refresh = info["authorization_info"]["authorizer_refresh_token"]
    now = time.time()
    cluster.container.callbacks.grants.save(
        AccountGrant("wechat_authorizer", APPID, ACCOUNT, refresh, json.dumps({"func_info": []}), now, now))
    cluster.fake.clear_calls()
    cluster.fake.delay(0.2)  # a slow platform widens the race
    urls = cluster.urls(AUTHORIZER_URL)
    batch = [next(urls) for _ in range(200)]
    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(lambda url: requests.get(url, timeout=30), batch))
    assert [a.status_code for a in answers] == [200] * 200, {a.text for a in answers if a.status_code != 200}
    served = {envelope(a)["data"] for a in answers}
    assert len(served) == 1 and cluster.fake.is_valid(served.pop(), AUTHORIZER)
    assert cluster.fake.count(AUTHORIZER_TOKEN_PATH) == 1
    assert cluster.fake.count(COMPONENT_TOKEN_PATH) == 1
    grant = cluster.container.callbacks.grants.get("wechat_authorizer", APPID, ACCOUNT)
    assert grant is not None and grant.secret == cluster.fake.refresh_token(APPID, ACCOUNT) != refresh



class PrivateRedis:
    """A redis-server of this test's own, so FLUSHALL touches nobody else."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port("127.0.0.1", self.port)
        self.client = redis.Redis(port=self.port)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


def test_flushall_and_a_restart_lose_no_ticket_and_no_refresh_token(
        tmp_path: Path, wxopen: FakeWeChatOpen, mysql_db: str, private_redis: PrivateRedis) -> None:
    cluster = Cluster(tmp_path, wxopen, {"redis_host": "127.0.0.1", "redis_port": private_redis.port}, mysql_db)
    cluster.start(instances=1)
    try:
        token = authorize(cluster)
        component = envelope(requests.get(cluster.servers[0].base_url + COMPONENT_URL, timeout=30))["data"]
        ticket = cluster.fake.current_ticket(APPID)
        refresh = cluster.fake.refresh_token(APPID, ACCOUNT)
        assert ticket and refresh
        private_redis.client.flushall()
        cluster.restart()
        private_redis.client.flushall()
        base = cluster.servers[0].base_url
        # Tokens live in Redis only (save_model auto): both are made again
        # from what SQL kept, the ticket and the refresh token.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.get(base + AUTHORIZER_URL, timeout=30), range(16)))
        assert {a.status_code for a in answers} == {200}, answers[0].text
        [new_token] = {envelope(a)["data"] for a in answers}
        assert new_token != token and cluster.fake.is_valid(new_token, AUTHORIZER)
        assert [c["body"]["authorizer_refresh_token"] for c in cluster.fake.find(AUTHORIZER_TOKEN_PATH)] == [refresh]
        new_component = envelope(requests.get(base + COMPONENT_URL, timeout=30))["data"]
        assert new_component != component
        assert [c["ticket"] for c in cluster.fake.find(COMPONENT_TOKEN_PATH)] == [ticket, ticket]
        assert cluster.fake.count(QUERY_AUTH_PATH) == 1  # no re-authorization
        # Sealed at rest.
        [(stored_ticket,)] = mysql_rows(mysql_db, "SELECT ticket FROM pushed_ticket")
        [(stored_refresh,)] = mysql_rows(mysql_db, "SELECT secret FROM account_grant")
        assert ticket not in stored_ticket and stored_ticket.startswith("fernet:")
        assert refresh not in stored_refresh and stored_refresh.startswith("fernet:")
        assert_no_secret(cluster.log(), cluster.fake)
    finally:
        cluster.stop()


def test_a_dead_refresh_token_is_one_call_across_the_cluster(cluster: Cluster) -> None:
    token = authorize(cluster)
    cluster.fake.unauthorize(APPID, ACCOUNT, deliver=False)  # the push is lost: 61023 from now on
    urls = cluster.urls(AUTHORIZER_URL)
    batch = [next(urls) for _ in range(60)]
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda url: requests.put(url, json={"stale_token": token}, timeout=30), batch))
    # 429: one client asking for that many refreshes a minute is held back before the platform is.
    assert {a.status_code for a in answers} <= {502, 429} and any(a.status_code == 502 for a in answers)
    assert all("authorize the component again" in envelope(a)["error"] for a in answers if a.status_code == 502)
    assert cluster.fake.count(AUTHORIZER_TOKEN_PATH) == 1
    assert_no_secret(cluster.log() + "".join(a.text for a in answers), cluster.fake)
