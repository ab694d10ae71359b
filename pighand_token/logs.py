"""JSON log lines: one per request, one per platform call, and every other
line the service writes, each a single JSON object on stderr."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any


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
