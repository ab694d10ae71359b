"""The shipped worker class (pighand_token.worker.TokenWorker) under a real
gunicorn: how connections are spread over workers and threads.

Which worker answered is read from X-Request-Id: a generated id starts with a
prefix drawn once per worker process.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pighand_token.worker import ConnectionBoard
from tests.conftest import Gunicorn

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


class Conn:
    """One raw keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, timeout_s: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.buf = b""

    def send(self, data: bytes = REQUEST) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def get(self) -> str:
        """One request; the answering worker's request-id prefix."""
        self.send()
        status, headers, _ = self.response()
        assert status == 200
        return headers["x-request-id"][:12]

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def open_together(port: int, n: int) -> list[Conn]:
    """n connections opened at the same moment, as a client's pool does."""
    conns: list[Conn | None] = [None] * n
    barrier = threading.Barrier(n)

    def connect(i: int) -> None:
        barrier.wait()
        conns[i] = Conn(port)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c is not None for c in conns)
    return [c for c in conns if c is not None]


def get_on_each(conns: list[Conn]) -> Counter[str]:
    """One request on every connection at once; how many each worker answered."""
    with ThreadPoolExecutor(len(conns)) as pool:
        return Counter(pool.map(Conn.get, conns))


def wait_for_workers(server: Gunicorn, workers: int, timeout_s: float = 30) -> None:
    """Until every worker has booted and answers (gunicorn answers as soon as
    the first one does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        conns = open_together(server.port, 4 * workers)
        seen = get_on_each(conns)
        for c in conns:
            c.close()
        if len(seen) == workers:
            time.sleep(0.2)  # the workers see the closes
            return
        assert time.monotonic() < deadline, f"only {len(seen)} of {workers} workers answer"
        time.sleep(0.2)


def slowest_new_request(server: Gunicorn, *, for_s: float, pause_s: float) -> float:
    """Requests on fresh connections, one after another for for_s seconds;
    the longest any took to be answered."""
    started, worst = time.monotonic(), 0.0
    while time.monotonic() - started < for_s:
        probe = Conn(server.port, timeout_s=30)
        sent = time.monotonic()
        probe.get()
        worst = max(worst, time.monotonic() - sent)
        probe.close()
        time.sleep(pause_s)
    return worst


def test_connections_opened_together_are_spread_evenly_over_the_workers(tmp_path: Path) -> None:
    # Left to the kernel, whichever worker wakes first takes most of a burst
    # (and keep-alive makes that stick); here every burst splits 8/8 or 9/7.
    with Gunicorn(tmp_path, workers=2, is_enable_schedule=False) as server:
        wait_for_workers(server, 2)
        for _ in range(5):
            conns = open_together(server.port, 16)
            served_by = get_on_each(conns)
            for c in conns:
                c.close()
            assert sorted(served_by.values()) in ([8, 8], [7, 9]), served_by
            time.sleep(0.2)  # the workers see the closes


def test_a_frozen_sibling_does_not_stop_new_connections_being_served(tmp_path: Path) -> None:
    # A worker holding fewer connections but not accepting (stopped here with
    # SIGSTOP; stuck, in real life) only delays the others by a few ms.
    with Gunicorn(tmp_path, workers=2, is_enable_schedule=False) as server:
        wait_for_workers(server, 2)
        frozen = server.worker_pids()[0]
        os.kill(frozen, signal.SIGSTOP)
        try:
            started = time.monotonic()
            conns = [Conn(server.port, timeout_s=5) for _ in range(20)]
            served_by = Counter(c.get() for c in conns)
            elapsed = time.monotonic() - started
            for c in conns:
                c.close()
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert len(served_by) == 1 and sum(served_by.values()) == 20
        assert elapsed < 3, f"20 connections took {elapsed:.1f} s"


def test_more_keep_alive_connections_than_threads_are_all_served(tmp_path: Path) -> None:
    # Threads stay on their connection after answering; a request on another
    # connection must free one at once, not wait for the 5 s keep-alive.
    with Gunicorn(tmp_path, workers=1, threads=2, is_enable_schedule=False) as server:
        conns = [Conn(server.port, timeout_s=3) for _ in range(6)]
        for _ in range(5):
            for c in conns:
                c.get()  # raises socket.timeout if a thread never came
        for c in conns:
            c.close()


def test_pipelined_requests_on_one_connection_are_all_answered(tmp_path: Path) -> None:
    with Gunicorn(tmp_path, workers=1, threads=2, is_enable_schedule=False) as server:
        conn = Conn(server.port)
        conn.send(REQUEST * 3)
        answers = [conn.response() for _ in range(3)]
        assert [status for status, _, _ in answers] == [200, 200, 200]
        assert conn.get()  # and the connection still serves
        conn.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(tmp_path: Path) -> None:
    with Gunicorn(tmp_path, workers=1, threads=2, is_enable_schedule=False) as server:
        conn = Conn(server.port, timeout_s=10)
        conn.get()
        started = time.monotonic()
        assert conn.closed_by_server()  # blocks until the server closes it
        idle = time.monotonic() - started
        assert 4 <= idle <= 8, f"closed after {idle:.1f} s of idleness; keepalive is 5 s"
        conn.close()


# SIGTERM: gunicorn gives kept-alive connections 2 s to send a last request;
# SIGQUIT stops at once.
@pytest.mark.parametrize(("sig", "limit_s"), [(signal.SIGTERM, 4), (signal.SIGQUIT, 3)])
def test_stopping_does_not_wait_for_threads_kept_on_idle_connections(tmp_path: Path, sig: int,
                                                                     limit_s: float) -> None:
    server = Gunicorn(tmp_path, workers=2, threads=4, is_enable_schedule=False).start()
    conns = open_together(server.port, 8)
    try:
        get_on_each(conns)
        assert server.proc is not None
        started = time.monotonic()
        server.proc.send_signal(sig)
        server.proc.wait(timeout=15)
        stopped_in = time.monotonic() - started
    finally:
        for c in conns:
            c.close()
        server.stop()
    assert stopped_in < limit_s, f"stopping took {stopped_in:.1f} s"


def test_board_gives_each_live_worker_its_own_slot_and_forgets_dead_ones() -> None:
    board = ConnectionBoard(slots=3)
    assert board.least() == ConnectionBoard.ABSENT  # nobody accepts yet
    first = board.claim(set())
    second = board.claim({first}) if first is not None else None
    assert (first, second) == (0, 1)
    board.counts[0], board.counts[1] = 5, 2
    assert board.least() == 2
    assert board.claim({0, 1, 2}) is None  # full: that worker runs unbalanced
    assert board.claim({0}) == 1  # slot 1's worker died: reused, and absent until it runs
    assert board.least() == 5


@pytest.mark.parametrize("workers", [1, 3])
def test_every_worker_serves_with_the_shipped_worker_class(tmp_path: Path, workers: int) -> None:
    with Gunicorn(tmp_path, workers=workers, is_enable_schedule=False) as server:
        assert "Using worker: pighand_token.worker.TokenWorker" in server.log()
        wait_for_workers(server, workers)
        conns = open_together(server.port, 6 * workers)
        served_by = get_on_each(conns)
        for c in conns:
            c.close()
        assert max(served_by.values()) - min(served_by.values()) <= 2, served_by



def test_idle_connections_timing_out_do_not_hold_up_other_requests(tmp_path: Path) -> None:
    # Callers' pools keep idle connections open without ever closing them;
    # when the server closes them (keep-alive timeout) it must not wait for
    # the caller's side of the close while other requests queue.
    with Gunicorn(tmp_path, workers=1, threads=4, is_enable_schedule=False) as server:
        idle = [Conn(server.port) for _ in range(4)]
        for c in idle:
            c.get()
        worst = slowest_new_request(server, for_s=7, pause_s=0.05)  # across the 5 s keep-alive expiry
        assert all(c.closed_by_server() for c in idle)
        for c in idle:
            c.close()
    assert worst < 1, f"a request waited {worst:.1f} s while idle connections were closed"


def test_a_connection_waiting_behind_threads_kept_on_connections_is_served_at_once(tmp_path: Path) -> None:
    # One thread stays on A; B is open but sends nothing (the other thread
    # waits on it); C's request must free A's thread, not wait for B.
    with Gunicorn(tmp_path, workers=1, threads=2, is_enable_schedule=False) as server:
        for _ in range(20):
            a = Conn(server.port)
            a.get()
            time.sleep(0.05)
            b, c = Conn(server.port), Conn(server.port, timeout_s=3)
            c.get()  # socket timeout if C waited for B's 5 s data timeout
            for conn in (a, b, c):
                conn.close()
            time.sleep(0.1)


def test_a_max_requests_restart_does_not_wait_for_threads_kept_on_idle_connections(tmp_path: Path) -> None:
    server = Gunicorn(tmp_path, workers=1, threads=4, is_enable_schedule=False)
    server.env["GUNICORN_CMD_ARGS"] = "--max-requests 30"
    with server:
        for _ in range(10):
            Conn(server.port).get()
        idle = [Conn(server.port) for _ in range(3)]
        for c in idle:
            c.get()  # the requests that reach max_requests come next, from fresh connections
        worst = slowest_new_request(server, for_s=12, pause_s=0.02)
        for c in idle:
            c.close()
        assert "Autorestarting worker" in server.log()
    # gunicorn gives kept-alive connections 2 s when a worker stops, then the
    # new worker boots; threads kept on connections must not add their 5 s.
    assert worst < 4.5, f"new requests waited {worst:.1f} s during the restart"
