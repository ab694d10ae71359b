"""The background thread a token-change follower runs in (Redis pub/sub or
SQL polling): started and stopped with the worker, never crashing it,
reconnecting with a bounded backoff and logging once per outage."""

from __future__ import annotations

import logging
import threading
import time

from ..core.errors import Unavailable

log = logging.getLogger(__name__)


class Follower:
    """Runs ``_follow`` in a daemon thread until ``stop``.

    ``_follow`` returns once ``_stopping`` is set and raises Unavailable when
    its store is lost; it is then run again after a pause that doubles from
    ``MIN_PAUSE_S`` up to ``MAX_PAUSE_S``. It calls ``_recovered`` whenever it
    is following (again), which ends an outage and resets the pause.
    """

    MIN_PAUSE_S = 0.1
    MAX_PAUSE_S = 2.0

    def __init__(self, what: str) -> None:
        self._what = what
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pause_s = self.MIN_PAUSE_S
        self._down_since: float | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=self._what, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _follow(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow()
            except Unavailable as exc:
                self._lost(exc.message)
            except Exception:  # noqa: BLE001 - a bug here must not stop the worker's invalidations for good
                log.exception("%s failed; starting again", self._what)
            if self._stopping.wait(self._pause_s):
                return
            self._pause_s = min(self.MAX_PAUSE_S, self._pause_s * 2)

    def _recovered(self) -> None:
        self._pause_s = self.MIN_PAUSE_S
        if self._down_since is not None:
            log.info("%s: following again after %.1f s", self._what, time.monotonic() - self._down_since)
            self._down_since = None

    def _lost(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s lost (%s); reconnecting, and meanwhile this worker serves tokens from its memory "
                        "for at most local_cache_ttl", self._what, reason)
