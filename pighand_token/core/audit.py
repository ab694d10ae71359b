"""The audit trail: who changed what, when, from where.

Actions: token.refresh, credential.add, credential.remove, credential.import,
client.add, client.revoke, secrets.rotate, secrets.encrypt.
"""

from __future__ import annotations

import logging
import threading

from .domain import AuditEntry
from .errors import PighandError
from .ports import AuditLog, Clock

log = logging.getLogger(__name__)

# Refusals of apps that do not exist are written at most once per window per
# client (per process): invented appids must not grow the audit table.
REFUSAL_WINDOW_S = 60.0


class Audit:
    def __init__(self, store: AuditLog, clock: Clock) -> None:
        self.store = store
        self._clock = clock
        # (action, client, status) -> [window start, refusals not written since]
        self._refusals: dict[tuple[str, str | None, int], list[float]] = {}
        self._refusals_mutex = threading.Lock()

    def record_refusal(self, action: str, status: int, message: str, *, client: str | None = None,
                       platform: str | None = None, appid: str | None = None, request_id: str | None = None,
                       remote_addr: str | None = None) -> None:
        """A refusal (404: no such app) as one line per REFUSAL_WINDOW_S per
        client and status; the next line written says how many were left out."""
        now = self._clock()
        with self._refusals_mutex:
            window = self._refusals.get((action, client, status))
            if window is not None and now - window[0] < REFUSAL_WINDOW_S:
                window[1] += 1
                return
            skipped = int(window[1]) if window is not None else 0
            self._refusals[(action, client, status)] = [now, 0]
        more = f" ({skipped} more refused in the previous window, not written)" if skipped else ""
        self.record(action, f"failed {status}: {message}{more}", client=client, platform=platform, appid=appid,
                    request_id=request_id, remote_addr=remote_addr)

    def record(self, action: str, outcome: str, *, client: str | None = None, platform: str | None = None,
               appid: str | None = None, request_id: str | None = None, remote_addr: str | None = None) -> None:
        entry = AuditEntry(at=self._clock(), action=action, outcome=outcome, client=client, platform=platform,
                           appid=appid, request_id=request_id, remote_addr=remote_addr)
        try:
            self.store.record(entry)
        except PighandError as exc:
            # The action itself went through; losing its trail is worth a loud log line.
            log.error("audit entry lost (%s %s %s/%s): %s", action, outcome, platform, appid, exc.message)

    def tail(self, count: int) -> list[AuditEntry]:
        return self.store.tail(count)
