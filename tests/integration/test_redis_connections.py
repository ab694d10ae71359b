"""Redis by URL, by unix socket and through Sentinel, each against a real
private redis-server (and redis-sentinel) started for the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pighand_token.app import create_app
from pighand_token.core.domain import Credential
from tests.conftest import app_overrides, free_port
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"


def wait_ping(client: redis.Redis, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    socket_path = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--unixsocket", str(socket_path), "--unixsocketperm", "700"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    try:
        wait_ping(client)
        yield {"port": port, "socket": str(socket_path), "client": client}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def fetch_via(settings: dict[str, Any], wechat: FakeWeChat, tmp_path: Path) -> str:
    app = create_app(overrides={"sqlite_path": str(tmp_path / "p.sqlite3"), **app_overrides(wechat), **settings})
    app.extensions["pighand"].credentials.add(Credential("wechat", APP, "s3cr3t-wx-1"), update=True)
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 200, answer.get_json()
    return str(answer.get_json()["data"])


def test_redis_url(private_redis: dict[str, Any], wechat: FakeWeChat, tmp_path: Path) -> None:
    token = fetch_via({"redis_url": f"redis://127.0.0.1:{private_redis['port']}/3"}, wechat, tmp_path)
    db3 = redis.Redis(port=private_redis["port"], db=3, decode_responses=True)
    assert db3.get(f"wechat_{APP}") == token
    assert private_redis["client"].get(f"wechat_{APP}") is None  # db 0 untouched


def test_redis_unix_socket(private_redis: dict[str, Any], wechat: FakeWeChat, tmp_path: Path) -> None:
    token = fetch_via({"redis_url": f"unix://{private_redis['socket']}"}, wechat, tmp_path)
    assert private_redis["client"].get(f"wechat_{APP}") == token


def test_redis_sentinel(private_redis: dict[str, Any], wechat: FakeWeChat, tmp_path: Path) -> None:
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor pighand 127.0.0.1 {private_redis['port']} 1\n"
        "sentinel down-after-milliseconds pighand 5000\n")
    proc = subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ping(redis.Redis(port=sentinel_port))
        token = fetch_via({"redis_sentinels": f"127.0.0.1:{sentinel_port}", "redis_sentinel_master": "pighand"},
                          wechat, tmp_path)
        assert private_redis["client"].get(f"wechat_{APP}") == token
    finally:
        proc.kill()
        proc.wait(timeout=10)
