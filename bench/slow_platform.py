"""Cached GETs while the platform is slow: the same wrk load on the same
workers, first idle, then while 5 cold appids (credentials seeded, never
fetched) are being fetched from a fake WeChat that takes 3 s per token call.
Target: 0 errors, and p99 at most 3 x the idle p99.

Every call the fake gets during the cold run waits 3 s (``FakeWeChat.delay``
holds every endpoint, not one): that is the token endpoint alone, because
the cached GETs never reach the platform and the scheduler is off (it would
fetch the cold appids on its first tick). The run checks it: every platform
call made meanwhile must be one of the cold fetches.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BenchError, WrkResult, http_get, measured_run, run_wrk, running, wait_quiet
from bench.ours import Store, envelope_data, shipped_server, wait_all_workers, warm
from tests.fakes.wechat import FakeWeChat

WARM_APPID = "wx_slow_warm"
COLD_IN_FLIGHT = 5
PLATFORM_DELAY_S = 3.0
WARM_S = 1


@dataclass
class SlowResult:
    idle: WrkResult
    cold: WrkResult
    cold_fetches: int = 0  # cold GETs made during the run (5 in flight at any time)
    cold_failed: int = 0
    cold_s: list[float] = field(default_factory=list)  # how long each took

    @property
    def errors(self) -> int:
        return self.cold.errors + self.cold_failed

    @property
    def p99_ratio(self) -> float:
        return self.cold.p99_ms / self.idle.p99_ms if self.idle.p99_ms else math.inf


class SlowPlatform:
    """One store with the warm appid and a pool of cold ones; a fresh server
    and fresh cold appids every round."""

    def __init__(self, tmp: Path, wechat: FakeWeChat, rounds: int, duration_s: int) -> None:
        self.tmp = tmp
        self.wechat = wechat
        # Keep 5 fetches in flight for the whole run: each fetcher takes the
        # next cold appid as soon as its last one is served.
        per_fetcher = math.ceil((duration_s + 2) / PLATFORM_DELAY_S) + 1
        self.cold = [f"wx_slow_cold_{i:04d}" for i in range(rounds * COLD_IN_FLIGHT * per_fetcher)]
        self.store = Store(tmp / "slow-platform.sqlite3", wechat.base_url)
        rows = [(WARM_APPID, "slow-secret-warm"), *((appid, f"slow-secret-{appid}") for appid in self.cold)]
        for appid, secret in rows:
            wechat.add_app(appid, secret)
        self.store.import_wechat(rows, tmp)
        self.store.add_client()
        self._unused = list(self.cold)

    def measure(self, duration_s: int, quiet_s: float) -> SlowResult:
        server = shipped_server("slow_platform", self.store, self.tmp, schedule=False)
        url = f"{server.base_url}/token/wechat/{WARM_APPID}"
        headers = self.store.headers
        with running(server):
            wait_all_workers(server)
            warm(server, self.store, [WARM_APPID])
            run_wrk(url, WARM_S, headers)
            if quiet_s > 0:
                wait_quiet(quiet_s)
            idle = measured_run(server, url, duration_s, headers=headers)
            if quiet_s > 0:
                wait_quiet(quiet_s)
            calls_before = len(self.wechat.calls)
            self.wechat.delay(PLATFORM_DELAY_S)
            fetchers = ColdFetchers(f"{server.base_url}/token/wechat/", headers, self._unused)
            try:
                fetchers.start()
                cold = measured_run(server, url, duration_s, headers=headers)
                fetchers.finish()
            finally:
                fetchers.stop.set()
                self.wechat.delay(0)
            made = self.wechat.calls[calls_before:]
        strays = sorted({str(c.get("appid")) for c in made} - set(fetchers.asked))
        if strays:
            raise BenchError(f"slow_platform: the platform was called for {strays} during the cold run; only the "
                             "cold appids should reach it")
        short = [s for s in fetchers.took if s < PLATFORM_DELAY_S * 0.95]
        if short:
            raise BenchError(f"slow_platform: cold fetches answered in {min(short):.2f} s, less than the "
                             f"platform's {PLATFORM_DELAY_S:g} s: the delay did not apply")
        server.drop_log()
        return SlowResult(idle=idle, cold=cold, cold_fetches=len(fetchers.asked), cold_failed=len(fetchers.failed),
                          cold_s=fetchers.took)


class ColdFetchers:
    """COLD_IN_FLIGHT threads, each GETting one cold appid after another
    (fresh connections) until ``finish``; every GET must answer a token."""

    def __init__(self, base: str, headers: dict[str, str], unused: list[str]) -> None:
        self.base = base
        self.headers = headers
        self.unused = unused
        self.todo: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.asked: list[str] = []
        self.took: list[float] = []
        self.failed: list[str] = []
        self.in_flight = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True, name=f"cold-{i}")
                        for i in range(COLD_IN_FLIGHT)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        for _ in self.threads:  # every fetcher has sent its first GET
            self.in_flight.acquire(timeout=10)
        time.sleep(0.2)  # and the server has taken it to the platform

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=PLATFORM_DELAY_S * 4 + 30)

    def _next(self) -> str | None:
        with self.lock:
            if not self.unused:
                return None
            return self.unused.pop(0)

    def _run(self) -> None:
        first = True
        while not self.stop.is_set():
            appid = self._next()
            if appid is None:
                with self.lock:
                    self.failed.append("(the cold appid pool ran out)")
                return
            with self.lock:
                self.asked.append(appid)
            started = time.perf_counter()
            if first:
                self.in_flight.release()
                first = False
            try:
                answer = http_get(self.base + appid, headers=self.headers, timeout_s=PLATFORM_DELAY_S * 4 + 10)
                data = envelope_data(answer.status, answer.body, what=f"cold GET {appid}")
                ok = isinstance(data, str) and bool(data)
            except (OSError, BenchError):
                ok = False
            with self.lock:
                self.took.append(time.perf_counter() - started)
                if not ok:
                    self.failed.append(appid)
