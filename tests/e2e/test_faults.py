"""Faults on real processes: a store that freezes, a Redis that comes back
empty, with the shipped server serving."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import redis
import requests

from tests.conftest import REDIS, PrivateMariaDB, Server, clean_env, free_port, run_cli
from tests.e2e.test_workers import envelope
from tests.fakes.wechat import FakeWeChat
from tests.integration.test_redis_connections import wait_ping

APP, SECRET = "wx_app_1", "s3cr3t-wx-1"


def get(url: str) -> requests.Response:
    # A fresh connection each time, so the answers come from both workers.
    return requests.get(url, timeout=10, headers={"Connection": "close"})


def both_workers(url: str) -> list[requests.Response]:
    """Fresh-connection GETs until both workers have answered."""
    answers: list[requests.Response] = []
    while len({a.headers["X-Request-Id"][:12] for a in answers}) < 2:
        answers.append(get(url))
        assert len(answers) < 200, [a.status_code for a in answers]
    return answers


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


def test_redis_restarted_empty_gets_its_tokens_back_from_the_workers_memory(tmp_path: Path,
                                                                             wechat: FakeWeChat) -> None:
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(folder)]
    apps = [f"wx_app_{i}" for i in range(3)]
    for appid in apps:
        wechat.add_app(appid, SECRET)
    settings = {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_host": "127.0.0.1", "redis_port": port}
    env = clean_env(**settings)
    for appid in apps:
        run_cli("platform", "add", "wechat", appid, "--secret-file", "-", input=SECRET + "\n", env=env)
    redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, decode_responses=True)
        wait_ping(client)
        with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                    **settings) as server:
            tokens = {}
            for appid in apps:  # every worker holds every token
                seen, workers = set(), set()
                for _ in range(200):
                    answer = get(f"{server.base_url}/token/wechat/{appid}")
                    seen.add(envelope(answer)["data"])
                    workers.add(answer.headers["X-Request-Id"][:12])
                    if len(workers) == 2:
                        break
                assert len(seen) == 1 and len(workers) == 2
                tokens[appid] = seen.pop()
            calls = wechat.count()
            redis_proc.kill()
            redis_proc.wait(timeout=10)
            redis_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_ping(client)
            assert client.dbsize() == 0
            time.sleep(7)  # the followers resubscribe, and local_cache_ttl (5 s) has run out
            for appid in apps:
                for _ in range(12):
                    answer = get(f"{server.base_url}/token/wechat/{appid}")
                    assert answer.status_code == 200 and envelope(answer)["data"] == tokens[appid], server.log()[-2000:]
            assert wechat.count() == calls  # no platform call for a token the workers still held
            assert {appid: client.get(f"wechat_{appid}") for appid in apps} == tokens
    finally:
        redis_proc.kill()
        redis_proc.wait(timeout=10)


def test_sqlite_on_a_full_disk_still_refreshes_and_serves_from_memory(tmp_path: Path, wechat: FakeWeChat) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True, timeout=30)
    try:
        wechat.add_app(APP, SECRET)
        settings = {"sqlite_path": str(disk / "pighand.sqlite3")}
        env = clean_env(**settings)
        assert run_cli("platform", "add", "wechat", APP, "--secret-file", "-", input=SECRET + "\n",
                       env=env).returncode == 0
        with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                    **settings) as server:
            assert get(f"{server.base_url}/readyz").status_code == 200
            with open(disk / "filler", "wb") as filler:  # the disk fills up
                try:
                    while True:
                        filler.write(b"\0" * 65536)
                        filler.flush()
                except OSError:
                    pass
            url = f"{server.base_url}/token/wechat/{APP}"
            first = both_workers(url)
            assert {a.status_code for a in first} == {200}, server.log()[-3000:]
            assert wechat.count() <= 2  # one refresh per worker at most: their own locks
            calls = wechat.count()
            time.sleep(6)  # past local_cache_ttl: memory alone serves it now
            later = both_workers(url)
            assert {a.status_code for a in later} == {200}
            assert len({envelope(a)["data"] for a in first + later}) <= calls
            assert wechat.count() == calls
            ready = get(f"{server.base_url}/readyz")
            assert ready.status_code == 503 and ready.json()["error"] == "not ready: sqlite", ready.text
            (disk / "filler").unlink()  # space again
            assert get(f"{server.base_url}/readyz").status_code == 200
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)
