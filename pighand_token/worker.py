"""gunicorn's threaded worker, with new connections going to the worker that
holds the fewest.

Every gthread worker polls the same listening socket and accepts whatever it
is woken for. With keep-alive that choice sticks: a client's connections stay
on the worker that accepted them. When a client opens its pool at once (a
load balancer, a service's HTTP pool, a benchmark), the worker that wakes
first often takes all of it, and the others idle while it queues requests on
one core. Left to the kernel, 16 connections opened together all landed on one
of two workers in about one start in four here, and the service then answered
at one core's speed.

So the workers keep their open-connection counts on a shared board (an
anonymous shared memory map the master creates before it forks them). A
worker about to accept while a sibling holds fewer connections steps back for
a few milliseconds, so that sibling takes it; if nobody has by then (the
sibling is busy or stuck), it accepts after all. A worker that is not
accepting (booting, full, stopping) is not on the board.

gunicorn calls ``assign_slot`` (pre_fork) and ``release_slot`` (child_exit)
in the master; ``gunicorn.conf.py`` wires them. A worker without a slot
behaves exactly like gunicorn's ``gthread``.
"""

from __future__ import annotations

import mmap
import os
import select
import ssl
import threading
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# How long a busier worker leaves a waiting connection to its siblings. Long
# enough for a sibling's poll to wake and accept, short enough not to matter
# to a client when no sibling does.
YIELD_S = 0.005

# The gthread internals this class builds on (gunicorn >= 24): fail at import,
# not with a quietly unbalanced server, if a release renames them.
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
        self._map = mmap.mmap(-1, 4 * slots)  # anonymous and shared: forked workers see one board
        self.counts = memoryview(self._map).cast("i")
        for slot in range(slots):
            self.counts[slot] = self.ABSENT

    def least(self) -> int:
        """The fewest connections a worker that accepts holds (ABSENT if none)."""
        return min(self.counts)

    def claim(self, used: set[int]) -> int | None:
        """A free slot for a new worker (None when all are taken: that worker
        then runs unbalanced)."""
        for slot in range(self.slots):
            if slot not in used:
                self.counts[slot] = self.ABSENT  # not accepting until it runs
                return slot
        return None


def assign_slot(server: Any, worker: Any) -> None:
    """pre_fork hook (master): give the worker about to be forked a slot."""
    board = getattr(server, "pighand_board", None)
    if board is None:
        board = server.pighand_board = ConnectionBoard()
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
        self._must_accept_until = 0.0  # after a pause: take what is still waiting
        self._counts_lock = threading.Lock()
        self._waiting = 0  # connections handed to the pool, no thread on them yet
        self._busy = 0  # threads in handle(), lingering ones included
        self._lingering = 0
        self._kick_r, self._kick_w = -1, -1

    def init_process(self) -> None:
        self._kick_r, self._kick_w = os.pipe()
        os.set_blocking(self._kick_r, False)
        os.set_blocking(self._kick_w, False)
        super().init_process()

    # -- a thread stays on its connection --------------------------------------
    # gthread hands every request of a keep-alive connection from the main
    # thread to a pool thread and back: a poller registration, a queue hand-off
    # and a wake-up pipe per request, and three GIL hand-overs. For a cached
    # token those cost more than the answer. So after answering, the thread
    # waits on the connection itself for the next request, as long as no other
    # connection waits for a thread; when one does, the main thread kicks one
    # lingering thread free (a byte on the kick pipe), which hands its
    # connection back to the poller, as gthread would have.

    def enqueue_req(self, conn: Any) -> None:
        with self._counts_lock:
            self._waiting += 1
            kick = self._lingering > 0 and self._busy >= self.cfg.threads
        if kick:
            self._kick(1)
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        with self._counts_lock:
            self._waiting -= 1
            self._busy += 1
        try:
            result = super().handle(conn)
            while result is True and self.alive:
                arrived = self._next_request(conn)
                if arrived is None:
                    return False  # idle for the keep-alive timeout: close it
                if not arrived:
                    break
                result = super().handle(conn)
            return result
        finally:
            with self._counts_lock:
                self._busy -= 1

    def _next_request(self, conn: Any) -> bool | None:
        """Wait on the connection for its next request: True when it is there,
        False to hand the connection back to the poller, None when it stayed
        idle for the keep-alive timeout."""
        if conn.parser.unreader.buf.getvalue() or (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
            return True  # already read (pipelined), or decrypted and buffered
        with self._counts_lock:
            if self._waiting:
                return False  # another connection needs this thread
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
            return bool(os.read(self._kick_r, 1))
        except BlockingIOError:
            return False  # another lingering thread took it

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._kick(self.cfg.threads)  # stopping: every lingering thread lets go

    def handle_quit(self, sig: Any, frame: Any) -> None:
        # Quick stop (SIGQUIT, SIGINT): the interpreter joins the pool's threads
        # on exit, so none may sit out a keep-alive wait first.
        self.alive = False
        self._kick(self.cfg.threads)
        super().handle_quit(sig, frame)

    # -- new connections go to the least loaded worker ----------------------------

    def _publish(self) -> None:
        if self.pighand_board is None or self.pighand_slot is None:
            return
        accepting = self.alive and self.nr_conns < self.worker_connections
        self.pighand_board.counts[self.pighand_slot] = self.nr_conns if accepting else ConnectionBoard.ABSENT

    def _sibling_holds_fewer(self) -> bool:
        return self.pighand_board is not None and self.pighand_board.least() < self.nr_conns

    def accept(self, listener: Any) -> None:
        now = time.monotonic()
        if now < self._must_accept_until:
            # Back from a pause and a connection still waits: no sibling took
            # it in time, so this worker does (one; the next one is weighed
            # again).
            self._must_accept_until = 0.0
        elif self._sibling_holds_fewer():
            # Step back: stop polling the listener for a moment so a less
            # loaded sibling takes this connection.
            self._paused_until = now + YIELD_S
            self._must_accept_until = self._paused_until + YIELD_S
            super().set_accept_enabled(False)
            return
        super().accept(listener)
        self._publish()

    def set_accept_enabled(self, enabled: bool) -> None:
        # The run loop re-enables accepting on every turn; not during a pause.
        if enabled and time.monotonic() < self._paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        self._publish()
        if self._paused_until:
            remaining = self._paused_until - time.monotonic()
            if remaining <= 0:
                self._paused_until = 0.0
            else:
                timeout = min(timeout, remaining)  # wake to resume accepting
        super().wait_for_and_dispatch_events(timeout)
