"""Faults on real processes: a store that freezes, with the shipped server
serving authenticated, cached GETs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from tests.conftest import REDIS, PrivateMariaDB, Server, clean_env, run_cli
from tests.fakes.wechat import FakeWeChat

APP, SECRET = "wx_app_1", "s3cr3t-wx-1"


def test_a_frozen_mariadb_stalls_no_cached_get(tmp_path: Path, wechat: FakeWeChat, private_mariadb: PrivateMariaDB,
                                               redis_prefix: str) -> None:
    wechat.add_app(APP, SECRET)
    settings = {**private_mariadb.settings(), "redis_host": REDIS["host"], "redis_port": REDIS["port"],
                "redis_key_prefix": redis_prefix, "sqlite_path": str(tmp_path / "unused.sqlite3")}
    env = clean_env(**settings)
    assert run_cli("platform", "add", "wechat", APP, "--secret-file", "-", input=SECRET + "\n", env=env).returncode == 0
    key = run_cli("client", "add", "billing", "--app", f"wechat:{APP}", env=env).stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    with Server(tmp_path, workers=2, auth_required=True, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                upstream_timeout=2, **settings) as server:
        url = f"{server.base_url}/token/wechat/{APP}"
        for _ in range(20):  # every worker has loaded its view of the clients and holds the token
            assert requests.get(url, headers={**headers, "Connection": "close"}, timeout=10).status_code == 200
        latencies: list[float] = []
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            session = requests.Session()
            while not stop.is_set():
                started = time.perf_counter()
                answer = session.get(url, headers=headers, timeout=30)
                latencies.append(time.perf_counter() - started)
                statuses.append(answer.status_code)
                time.sleep(0.01)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1)
            private_mariadb.freeze()
            time.sleep(15)  # past local_cache_ttl (5 s) and several reloads of the clients' view (2 s)
        finally:
            private_mariadb.thaw()
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert set(statuses) == {200}, server.log()[-3000:]
        assert len(latencies) > 1000
        p99 = sorted(latencies)[int(len(latencies) * 0.99)]
        assert p99 < 0.05, (p99, max(latencies))
