"""The access log: the same JSON lines as every other log line, written off
the request's thread."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest

from pighand_token.logs import AccessLog, JsonFormatter, request_event


def event(**extra: object) -> dict[str, object]:
    fields = dict(request_id="r1", remote_addr="10.1.2.3", client="billing", method="GET",
                  route="/token/<platform>/<appid>", platform="wechat", appid="wx1", tier="memory", status=200,
                  started=time.perf_counter())
    fields.update(extra)
    return request_event(**fields)  # type: ignore[arg-type]


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_request_is_one_json_line_with_the_formatters_keys() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    access.write(event())
    access.write(event(status=404, appid='odd"\n\x1b[2J'))
    access.flush()
    first, second = lines(stream)
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first["level"] == "info" and first["logger"] == "pighand_token.access" and first["msg"] == "request"
    assert first["kind"] == "request" and first["client"] == "billing" and first["status"] == 200
    assert first["remote_addr"] == "10.1.2.3"
    assert isinstance(first["duration_ms"], float)
    assert second["appid"] == 'odd"\n\x1b[2J' and second["status"] == 404
    assert len(stream.getvalue().splitlines()) == 2  # the newline inside a value is escaped


@pytest.mark.parametrize(("client", "address"), [("billing", "10.1.2.3"), (None, "2001:db8::7"),
                                                 ('odd "name"', None), ("billing", 'odd "addr"')])
def test_the_hot_path_line_is_the_same_line(client: str | None, address: str | None) -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    started = time.perf_counter()
    access.write(event(client=client, remote_addr=address, started=started))
    access.cached_get("r1", address, client, "wechat", "wx1", "memory", started)
    access.flush()
    general, fast = lines(stream)
    assert list(general) == list(fast)
    for line in (general, fast):
        line.pop("ts"), line.pop("duration_ms")
    assert general == fast


def test_timestamps_match_the_other_log_lines() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    access.write(event())
    access.flush()
    record = logging.LogRecord("pighand_token", logging.INFO, __file__, 1, "x", None, None)
    other = json.loads(JsonFormatter().format(record))
    ts = str(lines(stream)[0]["ts"])
    assert len(ts) == len(str(other["ts"])) and ts.endswith("Z") and ts[:16] == str(other["ts"])[:16]


def test_the_writer_thread_writes_without_a_flush() -> None:
    stream = io.StringIO()
    access = AccessLog(stream)
    for status in range(1000):
        access.write(event(status=status))
    deadline = time.monotonic() + 5
    while len(stream.getvalue().splitlines()) < 1000 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [line["status"] for line in lines(stream)] == list(range(1000))


class StuckStream(io.StringIO):
    """A log stream whose first write blocks until released (a full pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(text)


def test_lines_past_the_queue_limit_are_dropped_and_counted() -> None:
    stream = StuckStream()
    access = AccessLog(stream)
    access.MAX_QUEUED = 3
    access.write(event(status=0))
    assert stream.entered.wait(5)  # the writer holds line 0 in a blocked write
    for status in range(1, 6):
        access.write(event(status=status))
    stream.release.set()
    deadline = time.monotonic() + 5
    while len(stream.getvalue().splitlines()) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    access.flush()
    deadline = time.monotonic() + 5
    while len(stream.getvalue().splitlines()) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    written = lines(stream)
    assert [line.get("status") for line in written if "status" in line] == [0, 1, 2, 3]
    warnings = [line for line in written if line["level"] == "warning"]
    assert len(warnings) == 1 and "2 access line(s) dropped" in str(warnings[0]["msg"])


def test_the_line_follows_the_access_loggers_level() -> None:
    access = AccessLog(io.StringIO())
    logger = logging.getLogger(AccessLog.LOGGER)
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert not access.enabled()
        logger.setLevel(logging.INFO)
        assert access.enabled()
    finally:
        logger.setLevel(before)
