"""JSON log lines: one per request, one per platform call, and every other
line the service writes, each a single JSON object on stderr."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
import uuid
from typing import Any

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


# A new id is a random per-process prefix and a counter: unique across
# workers and instances, and free of uuid4's os.urandom call, which cost
# about a tenth of a cached GET's time in a worker.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)
_ID_PID = os.getpid()


def request_id(given: str | None) -> str:
    """The caller's X-Request-Id when it is sane, else a new one."""
    global _ID_PREFIX, _ID_PID
    if given and _REQUEST_ID.fullmatch(given):
        return given
    if os.getpid() != _ID_PID:  # a forked worker: its own prefix
        _ID_PID, _ID_PREFIX = os.getpid(), uuid.uuid4().hex[:12]
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def request_event(*, request_id: str, client: str | None, method: str, route: str, platform: object,
                  appid: object, tier: str | None, status: int, started: float | None) -> dict[str, Any]:
    """The fields of the one JSON line logged per request."""
    return {"kind": "request", "request_id": request_id, "client": client, "method": method, "route": route,
            "platform": platform, "appid": appid, "tier": tier, "status": status,
            "duration_ms": None if started is None else round((time.perf_counter() - started) * 1000, 2)}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...}`` plus the fields a caller
    passed as ``extra={"event": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update(event)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


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
