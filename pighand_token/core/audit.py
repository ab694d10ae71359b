"""The audit trail: who changed what, when, from where.

Actions: token.refresh, credential.add, credential.remove, credential.import,
client.add, client.revoke, secrets.rotate, secrets.encrypt.
"""

from __future__ import annotations

import logging

from .domain import AuditEntry
from .errors import PighandError
from .ports import AuditLog, Clock

log = logging.getLogger(__name__)


class Audit:
    def __init__(self, store: AuditLog, clock: Clock) -> None:
        self.store = store
        self._clock = clock

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
