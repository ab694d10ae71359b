"""Memory: RSS of each worker of the shipped server with 1,000 WeChat
credentials seeded (``platform import``) and every token warm in every
worker. Target: at most 90 MB per worker.

Warm means each worker has answered each token once: GETs on fresh
connections until the X-Request-Id prefixes show every worker served it (the
scheduler's first tick would warm only the worker that ran it). RSS is
VmRSS from /proc/<pid>/status of each worker: the granian main process's
children except multiprocessing's resource_tracker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BenchError, rss_mb, running
from bench.ours import Store, shipped_server, wait_all_workers, warm
from tests.fakes.wechat import FakeWeChat

CREDENTIALS = 1000
LIMIT_MB = 90.0


@dataclass
class RssResult:
    credentials: int
    gets: int  # GETs it took to warm every token on every worker
    warm_s: float
    workers_mb: list[float] = field(default_factory=list)  # warm, per worker
    started_mb: list[float] = field(default_factory=list)  # right after start, per worker
    main_mb: float = 0.0  # the granian main process


def measure(tmp: Path, wechat: FakeWeChat, credentials: int = CREDENTIALS) -> RssResult:
    store = Store(tmp / "rss.sqlite3", wechat.base_url)
    rows = [(f"wx_rss_{i:05d}", f"rss-secret-{i:05d}") for i in range(credentials)]
    for appid, secret in rows:
        wechat.add_app(appid, secret)
    store.import_wechat(rows, tmp)
    store.add_client()
    server = shipped_server("rss", store, tmp, schedule=False)
    with running(server):
        wait_all_workers(server)
        workers = server.worker_pids()
        started_mb = [rss_mb(pid) for pid in workers]
        began = time.perf_counter()
        gets = warm(server, store, [appid for appid, _ in rows])
        warm_s = time.perf_counter() - began
        server.check_alive()
        if server.worker_pids() != workers:
            raise BenchError("rss: a worker was replaced while warming")
        result = RssResult(credentials=credentials, gets=gets, warm_s=round(warm_s, 2),
                           workers_mb=[round(rss_mb(pid), 1) for pid in workers],
                           started_mb=[round(mb, 1) for mb in started_mb],
                           main_mb=round(rss_mb(server.proc.pid), 1) if server.proc else 0.0)
    server.drop_log()
    return result
