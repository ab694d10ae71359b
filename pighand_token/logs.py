"""JSON log lines: one per request, one per platform call, and every other
line the service writes, each a single JSON object on stderr."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing.util
import os
import queue
import re
import sys
import threading
import time
import uuid
from typing import IO, Any

from .core.process import after_fork

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


# A new id is a random per-process prefix and a counter: unique across
# workers and instances, and free of uuid4's os.urandom call, which cost
# about a tenth of a cached GET's time in a worker.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = uuid.uuid4().hex[:12]


# A forked worker (gunicorn) draws its own prefix once, at the fork, rather
# than every request asking the kernel for its pid.
os.register_at_fork(after_in_child=_new_id_prefix)


def request_id(given: str | None) -> str:
    """The caller's X-Request-Id when it is sane, else a new one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def request_event(*, request_id: str, remote_addr: str | None, client: str | None, method: str, route: str,
                  platform: object, appid: object, tier: str | None, status: int,
                  started: float | None) -> dict[str, Any]:
    """The fields of the one JSON line logged per request. ``remote_addr``
    is the caller's (behind a trusted proxy, the one it names)."""
    return {"kind": "request", "request_id": request_id, "remote_addr": remote_addr, "client": client,
            "method": method, "route": route,
            "platform": platform, "appid": appid, "tier": tier, "status": status,
            "duration_ms": None if started is None else round((time.perf_counter() - started) * 1000, 2)}


_SECOND: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds; the seconds part is formatted once
    per second (strftime is most of the cost)."""
    second = int(created)
    cached = _SECOND
    if cached[0] != second:
        cached[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        cached[0] = second
    return f"{cached[1]}.{int(created * 1000) % 1000:03d}Z"


class AccessLog:
    """The one JSON line per request, written off the request's thread.

    A cached GET takes about 12 microseconds of Python; going through
    ``logging`` (a LogRecord, the caller's frame, a formatter, a locked
    write and flush per line) took twice that again. Here a request queues
    its line (the same keys, in the same order, as ``JsonFormatter``'s), or a
    cached GET only the values of its line; one thread per process makes the
    lines of each batch and hands them to the stream in one write.
    The line goes out when the ``pighand_token.access`` logger is enabled for
    INFO (``log_level`` info or debug), as before.
    """

    LOGGER = "pighand_token.access"
    _HEAD = '", "level": "info", "logger": "pighand_token.access", "msg": "request", '
    # Lines per write: each write lets the GIL go, so a burst of lines never
    # holds the request threads up for more than about half a millisecond.
    BATCH = 256
    # The writer wakes at most this often: one wake-up (and GIL hand-over)
    # per request would cost more than the line itself.
    PAUSE_S = 0.05
    # Lines waiting beyond this (stderr blocked) are dropped, and counted.
    MAX_QUEUED = 100_000
    MIDDLES = 4096

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._logger = logging.getLogger(self.LOGGER)
        self._stream = stream
        # A line, or the values of a cached GET's line (made by the writer).
        self._queue: queue.SimpleQueue[str | tuple[Any, ...]] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._dropped = 0
        after_fork(self, AccessLog._forked)
        self._middles: dict[tuple[str | None, str, str, str | None], str] = {}
        self._addresses: dict[str | None, str] = {}
        self._durations: dict[int, str] = {}

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, event: dict[str, Any]) -> None:
        """One request's line; any field may come from the caller (escaped)."""
        self._put(f'{{"ts": "{_timestamp(time.time())}{self._HEAD}{json.dumps(event, default=str)[1:]}')

    def cached_get(self, request_id: str, remote_addr: str | None, client: str | None, platform: str, appid: str,
                   tier: str | None, started: float) -> None:
        """The line of a GET the hot path answered: the same fields as
        ``write(request_event(...))`` gives. The request queues only the
        values; the writer thread makes the lines of a batch in one tight
        loop, off the request's thread."""
        self._put((time.time(), request_id, remote_addr, client, platform, appid, tier,
                   time.perf_counter() - started))

    def _cached_get_lines(self, batch: list[str | tuple[Any, ...]]) -> list[str]:
        """The batch's lines: its strings as they are, a cached GET's made
        from its values. The request id, the platform and the appid were
        validated by their patterns (A-Z a-z 0-9 _ . : -) before the request
        got here, so they need no escaping; the client name comes from the
        store and is encoded, as is the address (made once per address). The
        part of a line between the address and the duration is made once per
        client, appid and tier."""
        middles = self._middles
        addresses = self._addresses
        durations = self._durations
        lines = []
        # Lines of a batch come in time order, tens per millisecond under
        # load: the timestamp is made once per millisecond, and a duration
        # (hundredths of a millisecond) once per value, as round() writes it.
        last_ms, stamp = -1, ""
        for item in batch:
            if isinstance(item, str):
                lines.append(item)
                continue
            at, request_id, remote_addr, client, platform, appid, tier, seconds = item
            ms = int(at * 1000)
            if ms != last_ms:
                last_ms, stamp = ms, _timestamp(at)
            hundredths = int(seconds * 100_000 + 0.5)
            duration = durations.get(hundredths)
            if duration is None:
                if len(durations) >= self.MIDDLES:
                    durations.clear()
                duration = durations[hundredths] = repr(round(hundredths / 100, 2))
            address = addresses.get(remote_addr)
            if address is None:
                if len(addresses) >= self.MIDDLES:
                    addresses.clear()
                address = addresses[remote_addr] = json.dumps(remote_addr)
            middle = middles.get((client, platform, appid, tier))
            if middle is None:
                if len(middles) >= self.MIDDLES:
                    middles.clear()
                who = "null" if client is None else json.dumps(client)
                middle = middles[(client, platform, appid, tier)] = (
                    f', "client": {who}, "method": "GET", "route": "/token/<platform>/<appid>", '
                    f'"platform": "{platform}", "appid": "{appid}", "tier": "{tier}", "status": 200, "duration_ms": ')
            lines.append(f'{{"ts": "{stamp}{self._HEAD}"kind": "request", "request_id": "{request_id}", '
                         f'"remote_addr": {address}{middle}{duration}}}')
        return lines

    def _put(self, line: str | tuple[Any, ...]) -> None:
        if self._queue.qsize() >= self.MAX_QUEUED:
            self._dropped += 1
            return
        self._queue.put(line)
        if self._writer is None:
            self._start()

    def _forked(self) -> None:
        self._writer = None  # the parent's thread did not come along
        self._mutex = threading.Lock()

    def flush(self) -> None:
        """Write whatever is queued, now (at exit, and for tests)."""
        self._write(self._drain([]))

    def _start(self) -> None:
        with self._mutex:
            if self._writer is not None:
                return
            # Started on the first line, in the process that writes it; a
            # forked worker has none (see _forked) and starts its own.
            self._writer = threading.Thread(target=self._run, name="pighand-access-log", daemon=True)
            self._writer.start()
        # multiprocessing's workers leave through os._exit, past atexit.
        multiprocessing.util.Finalize(self, self.flush, exitpriority=10)

    def _run(self) -> None:
        while True:
            batch = self._drain([self._queue.get()])
            self._write(batch)
            if len(batch) < self.BATCH:  # caught up: let lines gather
                time.sleep(self.PAUSE_S)

    def _drain(self, batch: list[str | tuple[Any, ...]]) -> list[str | tuple[Any, ...]]:
        while len(batch) < self.BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[str | tuple[Any, ...]]) -> None:
        lines = self._cached_get_lines(batch)
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            lines.append(json.dumps({"ts": _timestamp(time.time()), "level": "warning", "logger": self.LOGGER,
                                     "msg": f"{dropped} access line(s) dropped: the log stream is not keeping up"}))
        if not lines:
            return
        stream = self._stream or sys.stderr
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed (shutting down): nothing to tell
            pass


ACCESS = AccessLog()


# What a terminal obeys rather than shows: C0 and C1 controls, DEL, and the
# bidirectional overrides and isolates (text that reorders itself on screen).
_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNPRINTABLE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
# JSON escapes C0 controls itself; the rest it leaves raw with ensure_ascii
# off (kept off so Chinese messages stay readable).
_UNSAFE_IN_JSON = re.compile(f"[\x7f-\x9f{_BIDI}]")


def printable(text: str) -> str:
    """``text`` with every such character written as its escape (ESC as
    ``\\x1b``), for CLI output: a platform's error message or a stored field
    can then neither move the cursor, retitle nor clear the terminal."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...}`` plus the fields a caller
    passed as ``extra={"event": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update(event)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class HideQuerySecrets(logging.Filter):
    """urllib3 logs every request line, query string included, at DEBUG: a
    root logger at DEBUG would print WeChat's ?secret= and WeCom's
    ?corpsecret=, or a ticket call's access_token."""

    PATTERN = re.compile(r"((?:secret|corpsecret|appsecret|app_secret|access_token)=)[^&\s\"']+", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            record.msg, record.args = self.PATTERN.sub(r"\1***", message), None
        return True
