"""The service's gunicorn worker: gunicorn's threaded worker (``gthread``)
with two changes for a service whose callers hold keep-alive connections.

**New connections go to the worker holding the fewest.** Every gthread worker
polls the same listening socket and accepts whatever it is woken for, and
with keep-alive that choice sticks. When a client opens its pool at once (a
load balancer, a service's HTTP pool, a benchmark), the worker that wakes
first often takes all of it while the others idle: 16 connections opened
together landed on one of two workers in about one start in four here, and
the service then answered at one core's speed. So workers keep their
open-connection counts on a shared board (an anonymous shared memory map the
master creates before it forks them). A worker about to accept while a
sibling holds at least two fewer steps back for a millisecond, so that sibling
takes the connection; if it is still waiting after the pause, this worker
takes it, and for a second stops stepping back (the sibling is busy or
stuck). A worker that does not accept (booting, full, stopping) is not on the
board. gunicorn calls ``assign_slot`` (pre_fork) and ``release_slot``
(child_exit) in the master; ``gunicorn.conf.py`` wires them. Without a slot,
or with ``reuse_port`` (each worker then has its own socket), a worker
accepts like gthread.

**A thread stays on a busy keep-alive connection.** gthread hands every
request of a keep-alive connection from the main thread to a pool thread and
back: a poller registration, a queue hand-off, a wake-up pipe and three GIL
hand-overs per request, which for a cached token cost more than the answer.
Here, after answering, the thread waits on the connection itself for the next
request, as long as no other connection waits for a thread. When one does,
the main thread kicks a lingering thread free (a byte on the kick pipe) and
that thread hands its connection back to the poller, as gthread would have.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import ssl
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# How long a busier worker leaves a waiting connection to its siblings before
# looking again: a polling sibling takes it within microseconds.
YIELD_S = 0.001
# Step back only for a sibling holding at least this many connections fewer:
# with short-lived connections the counts move all the time, and a difference
# of one is noise.
YIELD_GAP = 2
# A sibling whose loop has not turned for this long while this worker paused
# for it is taken for stopped or stuck (a polling one turns within the
# interpreter's 5 ms switch interval even when its threads are busy) ...
STUCK_AFTER_S = 0.02
# ... and this worker then accepts like gthread for this long.
STUCK_SIBLING_S = 1.0

# The gthread internals this class builds on (gunicorn >= 24): fail at import,
# not with a quietly different server, if a release renames them.
for _name in ("accept", "set_accept_enabled", "wait_for_and_dispatch_events", "enqueue_req", "handle",
              "handle_exit", "handle_quit"):
    if not callable(getattr(ThreadWorker, _name, None)):  # pragma: no cover - depends on the gunicorn release
        raise ImportError(f"gunicorn's ThreadWorker has no {_name}(): this gunicorn release is not supported")


class ConnectionBoard:
    """Open-connection counts of the workers, one int per slot, in memory
    shared by the master and every worker it forks."""

    ABSENT = 2**31 - 1  # a free slot, or a worker that does not accept now

    def __init__(self, slots: int = 64) -> None:
        self.slots = slots
        # Anonymous and shared: the workers forked after this see one board.
        self._counts_map, self._ticks_map = mmap.mmap(-1, 4 * slots), mmap.mmap(-1, 4 * slots)
        self.counts = memoryview(self._counts_map).cast("i")
        self.ticks = memoryview(self._ticks_map).cast("I")  # each worker's poll-loop turns, wrapping
        for slot in range(slots):
            self.counts[slot] = self.ABSENT

    def least_loaded(self) -> int:
        """The slot of a worker holding the fewest."""
        return self.counts.tolist().index(self.least())

    def least(self) -> int:
        """The fewest connections a worker that accepts holds (ABSENT if none)."""
        return min(self.counts)

    def claim(self, used: set[int]) -> int | None:
        """A free slot for a new worker (None when all are taken: that worker
        then accepts like gthread)."""
        for slot in range(self.slots):
            if slot not in used:
                self.counts[slot] = self.ABSENT  # not accepting until it runs
                return slot
        return None


def assign_slot(server: Any, worker: Any) -> None:
    """pre_fork hook (master): give the worker about to be forked a slot."""
    board = getattr(server, "pighand_board", None)
    if board is None:
        # Room for a reload (old and new workers side by side) and some TTIN.
        board = server.pighand_board = ConnectionBoard(slots=max(64, 4 * server.num_workers))
    used = {w.pighand_slot for w in server.WORKERS.values() if getattr(w, "pighand_slot", None) is not None}
    worker.pighand_board, worker.pighand_slot = board, board.claim(used)


def release_slot(server: Any, worker: Any) -> None:
    """child_exit hook (master): a dead worker's count must not attract
    connections nobody will accept."""
    board, slot = getattr(worker, "pighand_board", None), getattr(worker, "pighand_slot", None)
    if board is not None and slot is not None:
        board.counts[slot] = ConnectionBoard.ABSENT


class TokenWorker(ThreadWorker):
    """``gthread`` that leaves a new connection to a sibling holding fewer,
    and keeps a thread on a busy keep-alive connection while no other
    connection needs it."""

    pighand_board: ConnectionBoard | None = None
    pighand_slot: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paused_until = 0.0  # not accepting before this (monotonic)
        # (slot, its loop tick, since when) of the sibling this worker pauses for
        self._stepped_back_for: tuple[int, int, float] | None = None
        self._balance_after = 0.0  # a sibling was stuck: no stepping back before this
        self._counts_lock = threading.Lock()
        self._waiting = 0  # connections handed to the pool, no thread on them yet
        self._busy = 0  # threads in handle(), lingering ones included
        self._lingering = 0
        self._kicks = 0  # kick bytes written and not yet taken
        self._stop_kicked = False
        self._kick_r, self._kick_w = -1, -1

    def init_process(self) -> None:
        if self.cfg.reuse_port:
            self.pighand_board = None  # one socket per worker: nothing to hand to a sibling
        self._kick_r, self._kick_w = os.pipe()
        os.set_blocking(self._kick_r, False)
        os.set_blocking(self._kick_w, False)
        super().init_process()

    # -- a thread stays on its connection ---------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        with self._counts_lock:
            self._waiting += 1
            # Connections queued beyond the free threads and the kicks already
            # on their way: free one more lingering thread.
            short = self._waiting - (self.cfg.threads - self._busy) - self._kicks
            kick = short > 0 and self._lingering > self._kicks
            if kick:
                self._kicks += 1
        if kick:
            self._kick(1)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        with self._counts_lock:
            self._waiting -= 1
            self._busy += 1
        try:
            result = super().handle(conn)
            while result is True and self._still_running():
                arrived = self._next_request(conn)
                if arrived is None:
                    # Idle for the keep-alive timeout: close it here. Handing it
                    # back to be closed would have the main thread wait for the
                    # client's FIN (a graceful close), up to 2 s for an idle one.
                    try:
                        conn.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return False
                if not arrived:
                    break
                result = super().handle(conn)
            return result
        finally:
            with self._counts_lock:
                self._busy -= 1
            self._still_running()

    def _still_running(self) -> bool:
        if self.alive:
            return True
        if not self._stop_kicked:  # e.g. max_requests reached in a thread: stop lingering everywhere
            self._let_go_all()
        return False

    def _let_go_all(self) -> None:
        """Stopping: every lingering thread hands its connection back now."""
        self._stop_kicked = True
        self._kick(self.cfg.threads)

    def _next_request(self, conn: Any) -> bool | None:
        """Wait on the connection for its next request: True when it is there,
        False to hand the connection back to the poller, None when it stayed
        idle for the keep-alive timeout."""
        if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            return True  # decrypted and buffered: the poller would never see it
        with self._counts_lock:
            if self._waiting:
                return False  # another connection needs this thread
            if conn.parser.unreader.buf.getvalue():
                return True  # pipelined: already read
            self._lingering += 1
        try:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            poller.register(self._kick_r, select.POLLIN)
            deadline = time.monotonic() + self.cfg.keepalive
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                events = dict(poller.poll(remaining * 1000))
                if events.get(conn.sock.fileno()):
                    return True
                if self._kick_r in events and self._take_kick():
                    return False
        finally:
            with self._counts_lock:
                self._lingering -= 1

    def _kick(self, n: int) -> None:
        try:
            os.write(self._kick_w, b"k" * n)
        except OSError:  # pipe full: lingering threads are being kicked anyway
            pass

    def _take_kick(self) -> bool:
        """One kick frees one thread: the one that reads the byte."""
        try:
            taken = bool(os.read(self._kick_r, 1))
        except BlockingIOError:
            return False  # another lingering thread took it
        with self._counts_lock:
            self._kicks = max(0, self._kicks - 1)
        return taken

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._let_go_all()

    def handle_quit(self, sig: Any, frame: Any) -> None:
        # Quick stop (SIGQUIT, SIGINT): the interpreter joins the pool's threads
        # on exit, so none may sit out a keep-alive wait first.
        self.alive = False
        self._let_go_all()
        super().handle_quit(sig, frame)

    # -- new connections go to the least loaded worker --------------------------

    def _publish(self) -> None:
        if self.pighand_board is None or self.pighand_slot is None:
            return
        accepting = self.alive and self.nr_conns < self.worker_connections
        self.pighand_board.counts[self.pighand_slot] = self.nr_conns if accepting else ConnectionBoard.ABSENT

    def _should_step_back(self, now: float) -> bool:
        if self.pighand_board is None or self.pighand_slot is None or now < self._balance_after:
            return False
        return self.pighand_board.least() <= self.nr_conns - YIELD_GAP

    def accept(self, listener: Any) -> None:
        now = time.monotonic()
        board = self.pighand_board
        if board is not None and self._should_step_back(now):
            slot = board.least_loaded()
            tick = board.ticks[slot]
            since = self._stepped_back_for
            if since is None or since[:2] != (slot, tick):
                self._stepped_back_for = (slot, tick, now)
            if since is None or since[:2] != (slot, tick) or now - since[2] < STUCK_AFTER_S:
                self._paused_until = now + YIELD_S
                super().set_accept_enabled(False)
                return
            # This sibling's loop has not turned through all the pauses for
            # it: it is stopped or stuck. Take the connection, and stop
            # stepping back for a while.
            self._balance_after = now + STUCK_SIBLING_S
        super().accept(listener)
        self._publish()

    def set_accept_enabled(self, enabled: bool) -> None:
        # The run loop re-enables accepting on every turn; not during a pause.
        if enabled and time.monotonic() < self._paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        self._publish()
        if self.pighand_board is not None and self.pighand_slot is not None:
            ticks = self.pighand_board.ticks
            ticks[self.pighand_slot] = (ticks[self.pighand_slot] + 1) & 0xFFFFFFFF
        if self._paused_until:
            remaining = self._paused_until - time.monotonic()
            if remaining > 0:
                timeout = min(timeout, remaining)  # wake to resume accepting
            else:
                self._paused_until = 0.0
                if self.alive and self.nr_conns < self.worker_connections:
                    super().set_accept_enabled(True)
        super().wait_for_and_dispatch_events(timeout)
