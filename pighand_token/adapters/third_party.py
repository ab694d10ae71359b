"""Third-party apps' durable state in SQL: the tickets platforms push and
the grants accounts give (``core.ports.TicketStore`` and ``AccountGrants``).

Both are the only copy of what they hold: a ticket lost means waiting up to
ten minutes for the next push, a grant lost means the account must authorize
again. So neither lives only in Redis or memory. Tables: revision 0004.

With a cipher (secrets at rest) tickets and grant secrets are sealed; the
grant's compare-and-set compares the stored ciphertext the row was read
with, since sealing the same text twice gives different ciphertexts.
"""

from __future__ import annotations

from typing import Any

from ..core.domain import AccountGrant, PushedTicket
from .grants import SecretBox
from .sql import ENCRYPTED_COLUMNS, Database

ENCRYPTED_COLUMNS.extend([
    ("pushed_ticket", ("platform", "appid"), "ticket"),
    ("account_grant", ("platform", "owner", "account"), "secret"),
])

_TICKET = "platform, appid, ticket, created_at, expires_at, received_at"
_GRANT = "platform, owner, account, secret, info, authorized_at, updated_at"


class _Sealed:
    def __init__(self, db: Database, cipher: SecretBox | None) -> None:
        self._db = db
        self._cipher = cipher

    def _seal(self, value: str) -> str:
        return self._cipher.encrypt(value) if self._cipher else value

    def _unseal(self, stored: Any) -> str:
        return self._cipher.decrypt(str(stored)) if self._cipher else str(stored)


class SqlTicketStore(_Sealed):
    def latest(self, platform: str, appid: str) -> PushedTicket | None:
        rows, _ = self._db.execute(f"SELECT {_TICKET} FROM pushed_ticket WHERE platform = ? AND appid = ?",
                                   (platform, appid))
        if not rows:
            return None
        platform_, appid_, ticket, created_at, expires_at, received_at = rows[0]
        return PushedTicket(str(platform_), str(appid_), self._unseal(ticket), float(created_at),
                            float(expires_at), float(received_at))

    def offer(self, ticket: PushedTicket) -> bool:
        # One statement either way, so two workers taking two pushes at once
        # cannot interleave a read and a write: the later created_at wins.
        params = (ticket.platform, ticket.appid, self._seal(ticket.value), ticket.created_at, ticket.expires_at,
                  ticket.received_at)
        if self._db.upserts_on_conflict:
            self._db.execute(
                f"INSERT INTO pushed_ticket ({_TICKET}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (platform, appid) DO UPDATE SET ticket = excluded.ticket, "
                "created_at = excluded.created_at, expires_at = excluded.expires_at, "
                "received_at = excluded.received_at WHERE pushed_ticket.created_at < excluded.created_at", params)
        else:
            # MySQL applies the assignments left to right: created_at last, so
            # each IF still compares against the stored one.
            self._db.execute(
                f"INSERT INTO pushed_ticket ({_TICKET}) VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE "
                "ticket = IF(VALUES(created_at) > created_at, VALUES(ticket), ticket), "
                "expires_at = IF(VALUES(created_at) > created_at, VALUES(expires_at), expires_at), "
                "received_at = IF(VALUES(created_at) > created_at, VALUES(received_at), received_at), "
                "created_at = GREATEST(created_at, VALUES(created_at))", params)
        stored = self.latest(ticket.platform, ticket.appid)
        return stored is not None and stored.created_at == ticket.created_at and stored.value == ticket.value

    def retire(self, platform: str, appid: str, created_at: float, at: float) -> bool:
        # Keyed by created_at, not the value: sealed values differ per write.
        _, count = self._db.execute(
            "UPDATE pushed_ticket SET expires_at = ? WHERE platform = ? AND appid = ? AND created_at = ? "
            "AND expires_at > ?", (at, platform, appid, created_at, at))
        return count == 1


class SqlAccountGrants(_Sealed):
    def get(self, platform: str, owner: str, account: str) -> AccountGrant | None:
        rows, _ = self._db.execute(
            f"SELECT {_GRANT} FROM account_grant WHERE platform = ? AND owner = ? AND account = ?",
            (platform, owner, account))
        return self._open(rows[0]) if rows else None

    def list(self, platform: str, owner: str) -> list[AccountGrant]:
        rows, _ = self._db.execute(
            f"SELECT {_GRANT} FROM account_grant WHERE platform = ? AND owner = ? ORDER BY account",
            (platform, owner))
        return [self._open(row) for row in rows]

    def save(self, grant: AccountGrant) -> None:
        params = (grant.platform, grant.owner, grant.account, self._seal(grant.secret), grant.info,
                  grant.authorized_at, grant.updated_at)
        if self._db.upserts_on_conflict:
            self._db.execute(
                f"INSERT INTO account_grant ({_GRANT}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (platform, owner, account) DO UPDATE SET secret = excluded.secret, "
                "info = excluded.info, authorized_at = excluded.authorized_at, updated_at = excluded.updated_at",
                params)
        else:
            self._db.execute(
                f"INSERT INTO account_grant ({_GRANT}) VALUES (?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE "
                "secret = VALUES(secret), info = VALUES(info), authorized_at = VALUES(authorized_at), "
                "updated_at = VALUES(updated_at)", params)

    def rotate(self, current: AccountGrant, new: AccountGrant) -> bool:
        old = current.stored_secret or current.secret
        _, count = self._db.execute(
            "UPDATE account_grant SET secret = ?, info = ?, updated_at = ? "
            "WHERE platform = ? AND owner = ? AND account = ? AND secret = ?",
            (self._seal(new.secret), new.info, new.updated_at, current.platform, current.owner, current.account,
             old))
        return count == 1

    def remove(self, platform: str, owner: str, account: str) -> bool:
        _, count = self._db.execute("DELETE FROM account_grant WHERE platform = ? AND owner = ? AND account = ?",
                                    (platform, owner, account))
        return count > 0

    def _open(self, row: tuple[Any, ...]) -> AccountGrant:
        platform, owner, account, secret, info, authorized_at, updated_at = row
        return AccountGrant(str(platform), str(owner), str(account), self._unseal(secret), str(info),
                            float(authorized_at), float(updated_at), stored_secret=str(secret))
