"""The shipped server with several workers against the fake WeChat over HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from pighand_token.adapters.sql import Database, MySQLParams, SqlCredentialRepository
from pighand_token.core.domain import Credential
from tests.conftest import MYSQL, REDIS, Server, postgres_url
from tests.fakes.wechat import FakeWeChat

STABLE = "/cgi-bin/stable_token"


def seed(settings: dict[str, Any], *credentials: tuple[str, str] | tuple[str, str, str]) -> None:
    """Add credentials straight to the store: (appid, secret) for WeChat, or
    (platform, appid, secret)."""
    if settings.get("database_url"):
        db = Database(url=settings["database_url"])
    elif settings.get("mysql_host"):
        db = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                                        database=settings["mysql_database"]))
    else:
        db = Database(sqlite_path=settings["sqlite_path"])
    rows = [Credential("wechat", *c) if len(c) == 2 else Credential(*c) for c in credentials]
    SqlCredentialRepository(db).add_many(rows)
    db.close()


def storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    if "mysql" in kind:
        settings.update(mysql_host=MYSQL["host"], mysql_port=MYSQL["port"],
                        mysql_database=request.getfixturevalue("mysql_db"))
    if "postgres" in kind:
        settings.update(database_url=postgres_url(request.getfixturevalue("pg_db")))
    if "redis" in kind:
        settings.update(redis_host=REDIS["host"], redis_port=REDIS["port"],
                        redis_key_prefix=request.getfixturevalue("redis_prefix"))
    return settings


def envelope(response: requests.Response) -> dict[str, Any]:
    data = response.json()
    assert data["code"] == response.status_code
    return dict(data)


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgres", "redis+mysql"])
def test_concurrent_cold_gets_over_four_workers_make_one_call(kind: str, tmp_path: Path, wechat: FakeWeChat,
                                                              request: pytest.FixtureRequest) -> None:
    settings = storage(kind, tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"))
    wechat.delay(0.2)  # a slow platform widens the race
    with Server(tmp_path, workers=4, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                  **settings) as server:
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: requests.get(f"{server.base_url}/token/wechat/wx_app_1", timeout=30),
                                    range(80)))
        assert [a.status_code for a in answers] == [200] * 80, server.log()
        assert len({envelope(a)["data"] for a in answers}) == 1
        assert wechat.count(STABLE) == 1


def test_put_on_one_worker_is_served_by_all_with_redis(tmp_path: Path, wechat: FakeWeChat,
                                                       request: pytest.FixtureRequest) -> None:
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"))
    with Server(tmp_path, workers=3, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                  **settings) as server:
        url = f"{server.base_url}/token/wechat/wx_app_1"
        old = envelope(requests.get(url, timeout=10))["data"]
        new = envelope(requests.put(url, json={"stale_token": old}, timeout=10))["data"]
        assert new != old and wechat.is_valid(new)
        # The write is announced over Redis and every worker drops the
        # replaced token from its memory (the promise: within 100 ms).
        time.sleep(0.1)
        assert {envelope(requests.get(url, timeout=10))["data"] for _ in range(30)} == {new}


def test_scheduler_warms_tokens_once_across_four_workers(tmp_path: Path, wechat: FakeWeChat,
                                                         request: pytest.FixtureRequest) -> None:
    wechat.add_app("wx_app_2", "s3cr3t-wx-2")
    settings = storage("sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"), ("wx_app_2", "s3cr3t-wx-2"))
    with Server(tmp_path, workers=4, wechat_api_base=wechat.base_url, is_enable_schedule=True,
                  corn_interval=300, **settings) as server:
        deadline = time.monotonic() + 15
        while wechat.count(STABLE) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # every worker's first tick has run by now
        assert wechat.count(STABLE, appid="wx_app_1") == 1, server.log()
        assert wechat.count(STABLE, appid="wx_app_2") == 1
        # Warm before the first request: answering makes no further call.
        for appid in ("wx_app_1", "wx_app_2"):
            assert requests.get(f"{server.base_url}/token/wechat/{appid}", timeout=10).status_code == 200
        assert wechat.count(STABLE) == 2


def test_scheduler_refreshes_before_expiry_once_per_tick(tmp_path: Path, wechat: FakeWeChat,
                                                         request: pytest.FixtureRequest) -> None:
    # 8 s tokens, 2 s ticks: a token is due 4 s before it dies (margin 2 s,
    # plus one tick), so it is refreshed every ~4 s by exactly one worker.
    wechat.add_app("wx_short", "short-secret", expires_in=8)
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, ("wx_short", "short-secret"))
    with Server(tmp_path, workers=4, wechat_api_base=wechat.base_url, is_enable_schedule=True,
                  corn_interval=2, **settings) as server:
        url = f"{server.base_url}/token/wechat/wx_short"
        started = time.monotonic()
        served = set()
        while time.monotonic() - started < 9:
            answer = requests.get(url, timeout=10)
            assert answer.status_code == 200, server.log()
            token = envelope(answer)["data"]
            assert wechat.is_valid(token)
            served.add(token)
            time.sleep(0.2)
        calls = wechat.count(STABLE)
        # One warm-up call plus one per ~4 s; four uncoordinated workers would make four times as many.
        assert 2 <= calls <= 4, server.log()
        assert len(served) >= 2


def test_quick_start_defaults_create_tables_on_first_start(tmp_path: Path, wechat: FakeWeChat) -> None:
    sqlite_path = tmp_path / "fresh" / "pighand.sqlite3"
    with Server(tmp_path, workers=2, sqlite_path=str(sqlite_path), wechat_api_base=wechat.base_url) as server:
        answer = requests.get(f"{server.base_url}/token/wechat/wx_app_1", timeout=10)
        assert answer.status_code == 404 and "platform add" in envelope(answer)["error"]
        assert sqlite_path.exists()
        seed({"sqlite_path": str(sqlite_path)}, ("wx_app_1", "s3cr3t-wx-1"))
        answer = requests.get(f"{server.base_url}/token/wechat/wx_app_1", timeout=10)
        assert answer.status_code == 200 and wechat.is_valid(envelope(answer)["data"])


def test_put_on_one_worker_reaches_the_others_within_local_cache_ttl(tmp_path: Path, wechat: FakeWeChat,
                                                                     request: pytest.FixtureRequest) -> None:
    # Without Redis each worker may serve from its own memory for
    # local_cache_ttl after another worker replaced the token (classic mode:
    # the old token keeps working for 5 minutes meanwhile).
    settings = storage("sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"))
    with Server(tmp_path, workers=3, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                  wechat_token_mode="classic", local_cache_ttl=1, **settings) as server:
        url = f"{server.base_url}/token/wechat/wx_app_1"
        with ThreadPoolExecutor(12) as pool:
            old = {envelope(a)["data"] for a in pool.map(lambda _: requests.get(url, timeout=10), range(48))}
        assert len(old) == 1
        new = envelope(requests.put(url, timeout=10))["data"]
        assert new not in old and wechat.is_valid(new)
        time.sleep(1.1)
        with ThreadPoolExecutor(12) as pool:
            served = {envelope(a)["data"] for a in pool.map(lambda _: requests.get(url, timeout=10), range(48))}
        assert served == {new}
