"""Cold stampede: N concurrent GETs for a token nobody has fetched yet,
spread over instances of the shipped server (``python -m pighand_token
serve``) and their workers. Prints the platform calls made
(the target is exactly one), failures, distinct tokens served and latency.

    python -m bench.stampede [--requests 200] [--platform-latency 0.2] [--rounds 3]

Needs MariaDB at 127.0.0.1:3306 (root, no password) and Redis at
127.0.0.1:6379 for the MySQL and Redis layouts; without MariaDB those two
are skipped (and say so). ``python -m bench`` runs it too, as its
``stampede`` scenario.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pymysql
import redis
import requests

from bench.harness import ROOT, Server, base_env, free_port, running
from bench.ours import wait_all_workers
from pighand_token.adapters.sql import Database, MySQLParams, SqlCredentialRepository
from pighand_token.core.domain import Credential
from tests.fakes.wechat import STABLE_PATH, FakeWeChat

APPID = "wx_stampede"
SECRET = "stampede-secret"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@dataclass(frozen=True)
class Layout:
    name: str
    instances: int
    workers: int
    mysql: bool
    redis: bool


LAYOUTS = [
    Layout("sqlite, 1 x 4 workers", 1, 4, mysql=False, redis=False),
    Layout("mysql, 2 x 4 workers", 2, 4, mysql=True, redis=False),
    Layout("redis+mysql, 2 x 4 workers", 2, 4, mysql=True, redis=True),
]


@dataclass
class Result:
    layout: str
    calls: int
    failed: int
    tokens: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    wall_s: float


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def one_round(layout: Layout, requests_n: int, latency_s: float, tmp: Path) -> Result:
    settings = {
        "PIGHAND_ENV": "testing", "PIGHAND_HOST": "127.0.0.1", "PIGHAND_IS_ENABLE_SCHEDULE": "false",
        "PIGHAND_AUTH_REQUIRED": "false",
        "PIGHAND_LOG_LEVEL": "warning", "PIGHAND_SQLITE_PATH": str(tmp / f"{uuid.uuid4().hex}.sqlite3"),
        "PIGHAND_WORKERS": str(layout.workers), "PIGHAND_THREADS": "8",
    }
    database = f"pighand_bench_{uuid.uuid4().hex[:10]}"
    prefix = f"bench{uuid.uuid4().hex[:8]}:"
    with ExitStack() as stack, FakeWeChat() as wechat:
        wechat.add_app(APPID, SECRET)
        settings["PIGHAND_WECHAT_API_BASE"] = wechat.base_url
        if layout.mysql:
            conn = pymysql.connect(**MYSQL, autocommit=True)
            conn.cursor().execute(f"CREATE DATABASE `{database}`")
            stack.callback(lambda: (conn.cursor().execute(f"DROP DATABASE IF EXISTS `{database}`"), conn.close()))
            settings.update(PIGHAND_MYSQL_HOST=MYSQL["host"], PIGHAND_MYSQL_DATABASE=database)
            db = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                                            database=database))
        else:
            db = Database(sqlite_path=settings["PIGHAND_SQLITE_PATH"])
        SqlCredentialRepository(db).add(Credential("wechat", APPID, SECRET))
        db.close()
        if layout.redis:
            client = redis.Redis(host="127.0.0.1", port=6379)
            settings.update(PIGHAND_REDIS_HOST="127.0.0.1", PIGHAND_REDIS_KEY_PREFIX=prefix)

            def drop_keys() -> None:
                keys = list(client.scan_iter(match=f"{prefix}*"))
                if keys:
                    client.delete(*keys)
            stack.callback(drop_keys)

        urls = []
        for i in range(layout.instances):
            port = free_port()
            server = Server(f"stampede{i}", [sys.executable, "-m", "pighand_token", "serve"], kind="granian",
                            workers=layout.workers, env=base_env(**settings, PIGHAND_PORT=str(port)), cwd=ROOT,
                            port=port, log_dir=tmp, ready_path="/healthz")
            stack.enter_context(running(server))
            # Every worker takes its share of the GETs from the first one.
            wait_all_workers(server)
            urls.append(server.base_url)

        wechat.delay(latency_s)
        barrier = threading.Barrier(requests_n)
        local = threading.local()

        def get(i: int) -> tuple[int, str | None, float]:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            barrier.wait()
            started = time.perf_counter()
            try:
                answer = session.get(f"{urls[i % len(urls)]}/token/wechat/{APPID}", timeout=60)
                data = answer.json().get("data") if answer.status_code == 200 else None
                status = answer.status_code
            except requests.RequestException:
                status, data = 0, None
            return status, data, (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        with ThreadPoolExecutor(requests_n) as pool:
            answers = list(pool.map(get, range(requests_n)))
        wall = time.perf_counter() - started
        latencies = [a[2] for a in answers]
        return Result(layout.name, wechat.count(STABLE_PATH), sum(1 for a in answers if a[0] != 200),
                      len({a[1] for a in answers if a[1]}), percentile(latencies, 50), percentile(latencies, 99),
                      max(latencies), wall)


def mysql_available() -> bool:
    try:
        pymysql.connect(**MYSQL, connect_timeout=2).close()
    except pymysql.MySQLError:
        return False
    return True


def run(requests_n: int, latency_s: float, rounds: int, *, echo: bool = True) -> tuple[list[Result], list[str]]:
    """Every layout ``rounds`` times: the results, and the layouts skipped."""
    results: list[Result] = []
    skipped: list[str] = []
    layouts = LAYOUTS
    if not mysql_available():
        layouts = [layout for layout in LAYOUTS if not layout.mysql]
        skipped = [layout.name for layout in LAYOUTS if layout.mysql]
        if echo:
            print(f"  MariaDB is not reachable at {MYSQL['host']}:{MYSQL['port']}: skipped {', '.join(skipped)}")
    with tempfile.TemporaryDirectory(prefix="pighand-stampede-") as tmp:
        for layout in layouts:
            for _ in range(rounds):
                result = one_round(layout, requests_n, latency_s, Path(tmp))
                results.append(result)
                if echo:
                    print(f"  {result.layout:<28} calls={result.calls} failed={result.failed} "
                          f"tokens={result.tokens} p50={result.p50_ms:.0f} ms p99={result.p99_ms:.0f} ms "
                          f"max={result.max_ms:.0f} ms wall={result.wall_s:.2f} s", flush=True)
    return results, skipped


def met(result: Result) -> bool:
    return result.calls == 1 and result.failed == 0 and result.tokens == 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="concurrent cold GETs per round (default 200)")
    parser.add_argument("--platform-latency", type=float, default=0.2,
                        help="seconds the fake platform takes to answer (default 0.2)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per layout (default 1)")
    args = parser.parse_args(argv)
    print(f"cold stampede: {args.requests} concurrent GETs, platform answers in {args.platform_latency:g} s")
    results, _skipped = run(args.requests, args.platform_latency, args.rounds)
    print()
    print(f"{'layout':<28} {'calls':>5} {'failed':>6} {'tokens':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for layout in LAYOUTS:
        mine = [r for r in results if r.layout == layout.name]
        if not mine:
            continue
        print(f"{layout.name:<28} {max(r.calls for r in mine):>5} {sum(r.failed for r in mine):>6} "
              f"{max(r.tokens for r in mine):>6} {statistics.median(r.p50_ms for r in mine):>7.0f} "
              f"{statistics.median(r.p99_ms for r in mine):>7.0f}")
    ok = all(met(r) for r in results)
    print("target (1 call, 0 failed, 1 token):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
