"""``pighand-token serve`` (granian) as a process: slow and idle callers,
stopping, crashed workers, the scheduler across workers and instances, and
metrics across workers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from pighand_token.config import load_settings
from pighand_token.server import max_connections, options
from tests.conftest import REDIS, Server, clean_env, run_cli
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

STABLE = "/cgi-bin/stable_token"
APP, SECRET = "wx_app_1", "s3cr3t-wx-1"
TOKEN_ROUTE = "/token/<platform>/<appid>"


# -- helpers ---------------------------------------------------------------------
def worker_of(response: requests.Response) -> str:
    """The worker process that answered: every process has its own request id prefix."""
    return response.headers["X-Request-Id"][:12]


def wait_until(what: str, predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(step_s)


def get(url: str, timeout: float = 5) -> requests.Response:
    # A fresh connection each time, closed with the answer, so the next one
    # may land on another worker.
    return requests.get(url, timeout=timeout, headers={"Connection": "close"})


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def log_events(server: Server) -> list[dict[str, Any]]:
    events = []
    for line in server.log().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line that is not ours (a traceback, a warning)
    return events


def wait_exit(server: Server, timeout_s: float) -> float:
    """Seconds until the server process exited."""
    assert server.proc is not None
    started = time.monotonic()
    server.proc.wait(timeout=timeout_s)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    """The process runs (a zombie whose parent has gone counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def every_worker_answers(server: Server, count: int, path: str = "/healthz") -> set[str]:
    """Fresh-connection GETs until `count` different workers have answered."""
    seen: set[str] = set()

    def one_more() -> bool:
        seen.add(worker_of(get(server.base_url + path)))
        return len(seen) >= count

    wait_until(f"{count} workers answer", one_more, timeout_s=10, step_s=0)
    return seen


def seeded_server_settings(tmp_path: Path, wechat: FakeWeChat, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    seed(settings, (APP, SECRET))
    return {"wechat_api_base": wechat.base_url, "is_enable_schedule": False, **settings, **extra}


# -- slow and idle callers ---------------------------------------------------------
def test_slowloris_of_64_connections_leaves_healthz_answering_within_1_s(tmp_path: Path,
                                                                         wechat: FakeWeChat) -> None:
    # The shipped defaults: one worker per core, the default threads.
    with Server(tmp_path, workers=2, threads=0, **seeded_server_settings(tmp_path, wechat)) as server:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n\r\n"
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(64)]
        try:
            timings = []
            started = time.monotonic()
            for second in range(5):
                for conn in slow:
                    conn.sendall(head[second:second + 1])  # one header byte a second each
                tick = time.monotonic()
                while time.monotonic() - tick < 1:
                    t0 = time.monotonic()
                    answer = get(server.base_url + "/healthz", timeout=10)
                    timings.append(time.monotonic() - t0)
                    assert answer.status_code == 200
                    time.sleep(0.1)
            assert time.monotonic() - started >= 5
            # Every slow connection is still open and waiting (none was answered
            # or dropped): the attack held its connections the whole time.
            for conn in slow:
                conn.setblocking(False)
                with pytest.raises(BlockingIOError):
                    conn.recv(1)
        finally:
            for conn in slow:
                conn.close()
        assert len(timings) >= 20
        assert max(timings) < 1, sorted(timings)[-5:]
        # The default threads are above granian's rule of thumb on purpose; it does not warn at each start.
        assert "Configuration allows spawning" not in server.log()


def test_header_read_timeout_closes_a_connection_that_never_finishes_its_headers(tmp_path: Path,
                                                                                   wechat: FakeWeChat) -> None:
    with Server(tmp_path, workers=1, http_header_timeout=1.5,
                **seeded_server_settings(tmp_path, wechat)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Unfinished: ")
            started = time.monotonic()
            received = b""
            while chunk := conn.recv(4096):  # until the server closes the connection
                received += chunk
            closed_after = time.monotonic() - started
        assert 1.2 <= closed_after <= 4, closed_after
        assert b" 200 " not in received  # never answered as a request
        # A caller that does finish its headers is served as usual.
        assert get(server.base_url + "/healthz").status_code == 200


# -- stopping ----------------------------------------------------------------------
@dataclass
class Exchange:
    sent_at: float  # the request's last byte was handed to the kernel
    status: int | None = None  # None: no (complete) answer
    body: bytes = b""
    answered_at: float | None = None
    error: str = ""


def keep_alive_caller(port: int, paths: Iterator[str], stop: threading.Event, log: list[Exchange]) -> None:
    """One keep-alive connection sending requests one after another until the
    server closes it or `stop` is set."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        while not stop.is_set():
            path = next(paths)
            try:
                conn.request("GET", path)  # returns once every byte is sent
            except OSError:
                return  # refused or reset before the request went out: never sent
            exchange = Exchange(sent_at=time.monotonic())
            log.append(exchange)
            try:
                response = conn.getresponse()
                exchange.body = response.read()
                exchange.status, exchange.answered_at = response.status, time.monotonic()
            except (OSError, http.client.HTTPException) as exc:
                exchange.error = repr(exc)
                return
            if response.will_close:
                return
    finally:
        conn.close()


def test_sigterm_under_keep_alive_load_answers_every_request_sent_before_it(tmp_path: Path,
                                                                             wechat: FakeWeChat) -> None:
    # 12 connections on a cached token, 4 asking for a new appid each time
    # (a 0.6 s platform call): at the signal some fetches are in flight.
    cold = [(f"wx_cold_{i}", f"secret-{i}") for i in range(120)]
    for appid, secret in cold:
        wechat.add_app(appid, secret)
    settings = seeded_server_settings(tmp_path, wechat)
    seed({"sqlite_path": settings["sqlite_path"]}, *cold)
    cold_paths = iter(f"/token/wechat/{appid}" for appid, _ in cold)
    lock = threading.Lock()

    def next_cold() -> Iterator[str]:
        while True:
            with lock:
                path = next(cold_paths)
            yield path

    with Server(tmp_path, workers=2, threads=8, **settings) as server:
        assert get(f"{server.base_url}/token/wechat/{APP}").status_code == 200
        wechat.delay(0.6)
        stop = threading.Event()
        logs: list[list[Exchange]] = [[] for _ in range(16)]
        callers = []
        for i, log in enumerate(logs):
            paths = next_cold() if i < 4 else iter(lambda: f"/token/wechat/{APP}", None)
            callers.append(threading.Thread(target=keep_alive_caller, args=(server.port, paths, stop, log)))
        for caller in callers:
            caller.start()
        time.sleep(1.5)
        assert server.proc is not None
        signalled_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            stopped_in = wait_exit(server, 10)
        finally:
            stop.set()
            for caller in callers:
                caller.join(30)
        exchanges = [e for log in logs for e in log]
        before = [e for e in exchanges if e.sent_at < signalled_at]
        unanswered = [e for e in before if e.status != 200 or not envelope_ok(e.body)]
        assert not unanswered, (unanswered[:5], server.log()[-3000:])
        # The signal really came under load: many requests on every connection,
        # and platform fetches in flight that finished after it.
        per_connection = [len([e for e in log if e.sent_at < signalled_at]) for log in logs]
        assert min(per_connection[:4]) >= 2 and min(per_connection[4:]) >= 20, per_connection
        in_flight = [e for log in logs[:4] for e in log
                     if e.sent_at < signalled_at and e.answered_at and e.answered_at > signalled_at]
        assert in_flight, "no platform fetch was in flight at the signal"
        assert stopped_in < 10
        assert server.proc.returncode == 0, server.log()[-3000:]


def envelope_ok(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return bool(data.get("code") == 200 and data.get("data"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_ends_the_server_within_10_s_with_a_request_stuck_on_the_platform(
        signum: signal.Signals, tmp_path: Path, wechat: FakeWeChat) -> None:
    # upstream_timeout 30 s: the call would hold its thread far past the stop budget.
    with Server(tmp_path, workers=2, upstream_timeout=30,
                **seeded_server_settings(tmp_path, wechat)) as server:
        every_worker_answers(server, 2)
        workers = server.worker_pids()
        wechat.delay(60)
        stuck = threading.Thread(target=lambda: _ignore_errors(
            lambda: requests.get(f"{server.base_url}/token/wechat/{APP}", timeout=30)))
        stuck.start()
        time.sleep(1)  # the worker is waiting on the platform (the fake logs a call once it answers)
        assert server.proc is not None
        server.proc.send_signal(signum)
        stopped_in = wait_exit(server, 12)
        stuck.join(30)
        assert stopped_in < 10, server.log()[-3000:]
        assert server.proc.returncode == 0, server.log()[-3000:]
        assert not [pid for pid in workers if alive(pid)]  # no worker is left behind
        assert "Killing worker" in server.log()  # the stuck one was ended, not waited for


def _ignore_errors(call: Callable[[], Any]) -> None:
    try:
        call()
    except requests.RequestException:
        pass


# -- crashed workers -------------------------------------------------------------
def test_sigkilled_worker_is_replaced_and_serving_within_5_s_and_a_crash_loop_stops_the_server(
        tmp_path: Path, wechat: FakeWeChat) -> None:
    with Server(tmp_path, workers=2, **seeded_server_settings(tmp_path, wechat)) as server:
        # Right after start: a worker killed this early is replaced like any other.
        before = every_worker_answers(server, 2)
        original = server.worker_pids()
        victim = original[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # A connection the kernel queued for the victim as it died is reset
        # (one listening socket per worker); once granian has reaped it (all
        # its threads gone, its socket closed) the other worker takes every
        # new connection until the replacement listens beside it.
        wait_until("granian reaps the killed worker", lambda: "Unexpected exit from worker" in server.log(),
                   timeout_s=2)
        served_by: set[str] = set()

        def replaced() -> bool:
            served_by.add(worker_of(get(server.base_url + f"/token/wechat/{APP}", timeout=5)))
            pids = server.worker_pids()
            return len(pids) == 2 and victim not in pids and bool(served_by - before)

        wait_until("the killed worker's replacement answers", replaced, timeout_s=5, step_s=0)
        assert time.monotonic() - killed_at < 5
        assert server.proc is not None and server.proc.poll() is None
        assert "Respawning worker" in server.log()

        # The replacement dying too, within 5.5 s of starting, is a crash loop:
        # granian stops the other worker gracefully and exits 1, for the
        # supervisor (systemd, Kubernetes) to restart the service.
        pids = server.worker_pids()
        (replacement,) = set(pids) - set(original)
        os.kill(replacement, signal.SIGKILL)
        wait_exit(server, 10)
        assert server.proc.returncode == 1
        assert "Worker crash loop detected" in server.log()
        assert not [pid for pid in pids if alive(pid)]


def test_metrics_are_summed_across_workers_and_survive_a_respawn(tmp_path: Path, wechat: FakeWeChat) -> None:
    with Server(tmp_path, workers=2, **seeded_server_settings(tmp_path, wechat)) as server:
        url = f"{server.base_url}/token/wechat/{APP}"
        every_worker_answers(server, 2)  # both are listening
        first = {worker_of(get(url)) for _ in range(30)}
        assert len(first) == 2  # both workers counted some

        def scrapes(expected: float) -> set[str]:
            """Scrape until both live workers have answered; every scrape sees the whole count."""
            seen: set[str] = set()
            totals: list[float] = []
            while len(seen) < 2 or len(totals) < 6:
                answer = get(server.base_url + "/metrics")
                assert answer.status_code == 200
                seen.add(worker_of(answer))
                totals.append(metric(answer.text, "pighand_http_requests_total", route=TOKEN_ROUTE))
                assert len(totals) < 60, totals
            assert totals == [expected] * len(totals), totals
            return seen

        assert scrapes(30) == first
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until("a replacement worker", lambda: len(server.worker_pids()) == 2
                   and victim not in server.worker_pids(), timeout_s=10)
        second: set[str] = set()
        sent = 0
        deadline = time.monotonic() + 10
        while not second - first or sent < 30:  # until the new worker has counted some too
            second.add(worker_of(get(url)))
            sent += 1
            assert time.monotonic() < deadline, second
        # The killed worker's counts stay in the sum beside the new worker's.
        assert scrapes(30 + sent) - first


# -- CPU affinity ----------------------------------------------------------------------
def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of a process."""
    sets = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            sets.add(frozenset(os.sched_getaffinity(int(tid))))
        except OSError:  # a thread that has just ended
            pass
    return sets


def test_each_worker_is_pinned_to_a_cpu_of_its_own_and_a_replacement_takes_the_freed_one(
        tmp_path: Path, wechat: FakeWeChat) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    workers = min(2, len(cpus))
    with Server(tmp_path, workers=workers, **seeded_server_settings(tmp_path, wechat)) as server:
        every_worker_answers(server, workers)
        wait_until("every worker pinned", lambda: server.log().count("pinned to CPU") == workers, timeout_s=5)
        pinned = {pid: thread_cpus(pid) for pid in server.worker_pids()}
        # Each worker: every thread (Rust and Python) on one CPU, and no CPU shared.
        assert all(len(sets) == 1 and len(next(iter(sets))) == 1 for sets in pinned.values()), pinned
        held = {next(iter(next(iter(sets)))) for sets in pinned.values()}
        assert len(held) == workers and held <= set(cpus)
        victim = next(iter(pinned))
        freed = next(iter(next(iter(pinned[victim]))))
        os.kill(victim, signal.SIGKILL)
        wait_until("a replacement worker", lambda: len(server.worker_pids()) == workers
                   and victim not in server.worker_pids(), timeout_s=10)
        (replacement,) = set(server.worker_pids()) - set(pinned)
        wait_until("the replacement pinned to the freed CPU",
                   lambda: thread_cpus(replacement) == {frozenset({freed})}, timeout_s=10)
        assert get(f"{server.base_url}/token/wechat/{APP}").status_code == 200


@pytest.mark.parametrize("settings", [{"cpu_affinity": False}, {"workers": len(os.sched_getaffinity(0)) + 1}],
                         ids=["cpu_affinity-off", "more-workers-than-cpus"])
def test_workers_are_left_unpinned_when_asked_or_when_they_outnumber_the_cpus(
        tmp_path: Path, wechat: FakeWeChat, settings: dict[str, Any]) -> None:
    settings = {"workers": 1, **settings}
    with Server(tmp_path, **settings, **seeded_server_settings(tmp_path, wechat)) as server:
        every_worker_answers(server, settings["workers"])
        for pid in server.worker_pids():
            assert thread_cpus(pid) == {frozenset(os.sched_getaffinity(0))}
    assert "pinned to CPU" not in server.log()


# -- the scheduler -------------------------------------------------------------------
def test_two_instances_of_two_workers_run_one_scheduler_tick_per_interval(tmp_path: Path, wechat: FakeWeChat,
                                                                          request: pytest.FixtureRequest) -> None:
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, (APP, SECRET))
    with ExitStack() as stack:
        servers = [stack.enter_context(Server(tmp_path, workers=2, wechat_api_base=wechat.base_url,
                                              is_enable_schedule=True, corn_interval=2, log_level="info",
                                              **settings)) for _ in range(2)]
        for server in servers:
            every_worker_answers(server, 2)
        time.sleep(7)
        ran = skipped = 0.0
        for server in servers:
            # Each instance's scrape sums its own workers.
            text = get(server.base_url + "/metrics").text
            ran += metric(text, "pighand_scheduler_ticks_total", outcome="ran")
            skipped += metric(text, "pighand_scheduler_ticks_total", outcome="skipped")
        ticks = sorted(e["ts"] for server in servers for e in log_events(server)
                       if e.get("msg", "").startswith("scheduler tick:"))
    # Four workers each try every 2 s; about one tick per interval runs.
    seconds = _seconds(ticks[-1]) - _seconds(ticks[0])
    assert 3 <= len(ticks) <= seconds / 2 + 2, ticks
    gaps = [_seconds(b) - _seconds(a) for a, b in zip(ticks, ticks[1:], strict=False)]
    assert min(gaps) > 1.5, gaps  # the lease lasts 0.9 of an interval
    assert ran >= len(ticks) - 1 and ran <= len(ticks)  # a tick may run between the scrape and the log read
    assert skipped >= 2 * ran, (ran, skipped)
    assert wechat.count(STABLE) == 1  # the warm-up; the token then stays fresh


def _seconds(ts: str) -> float:
    # "2026-12-02T04:25:37.103Z"
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_a_cli_command_never_runs_the_scheduler(tmp_path: Path, wechat: FakeWeChat, redis_prefix: str) -> None:
    others = [("wx_app_2", "s3cr3t-wx-2"), ("wx_app_3", "s3cr3t-wx-3")]
    for appid, secret in others:
        wechat.add_app(appid, secret)
    sqlite_path = str(tmp_path / "pighand.sqlite3")
    seed({"sqlite_path": sqlite_path}, (APP, SECRET), *others)
    env = clean_env(sqlite_path=sqlite_path, wechat_api_base=wechat.base_url, auth_required=False,
                    redis_host=REDIS["host"], redis_port=REDIS["port"], redis_key_prefix=redis_prefix,
                    is_enable_schedule=True, corn_interval=1, log_level="debug")
    wechat.delay(1.5)  # the command lives past a tick a started scheduler would run at once
    result = run_cli("token", "get", "wechat", APP, env=env)
    assert result.returncode == 0, result.stderr
    assert wechat.is_valid(result.stdout.strip())
    assert [c["appid"] for c in wechat.find(STABLE)] == [APP]  # only the call the command needs
    assert "scheduler" not in result.stderr, result.stderr
    client = redis.Redis(**REDIS)
    try:
        assert not client.exists(f"{redis_prefix}pighand:lease:scheduler-tick")
    finally:
        client.close()


# -- settings reaching granian -------------------------------------------------------
def test_worker_lifetime_header_timeout_and_threads_reach_granian(tmp_path: Path, wechat: FakeWeChat) -> None:
    env = clean_env(worker_lifetime=90, http_header_timeout=2.5, threads=6, workers=3, auth_required=False)
    with _environ(env):
        opts = options(load_settings())
    assert (opts.worker_lifetime_s, opts.header_timeout_ms, opts.threads, opts.workers) == (90, 2500, 6, 3)
    with _environ(clean_env(worker_lifetime=0, auth_required=False)):
        assert options(load_settings()).worker_lifetime_s is None  # workers live until stopped
    # What the running server was given, as granian holds it.
    with Server(tmp_path, workers=1, threads=6, worker_lifetime=60, http_header_timeout=2.5,
                **seeded_server_settings(tmp_path, wechat)) as server:
        serving = [e for e in log_events(server) if e.get("logger") == "pighand_token.server"
                   and e["msg"].startswith("serving on")]
    assert len(serving) == 1, server.log()
    assert serving[0]["msg"] == (f"serving on 127.0.0.1:{server.port}: 1 workers x 6 threads, up to "
                                 f"{max_connections()} connections each, header read timeout 2.5 s, "
                                 "worker lifetime 60 s")


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_public_bind_with_auth_off_is_refused(tmp_path: Path) -> None:
    env = clean_env(host="0.0.0.0", auth_required=False, sqlite_path=str(tmp_path / "p.sqlite3"))
    result = run_cli("serve", env=env, timeout=30)
    assert result.returncode == 2
    assert "host='0.0.0.0' is invalid" in result.stderr
    assert "Listening" not in result.stderr  # refused before granian bound anything


def test_a_port_another_server_listens_on_is_refused(tmp_path: Path) -> None:
    # What granian itself holds: a listener with SO_REUSEPORT, which a second
    # granian would silently share.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = clean_env(host="127.0.0.1", port=port, sqlite_path=str(tmp_path / "p.sqlite3"))
        result = run_cli("serve", env=env, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "Listening" not in result.stderr
