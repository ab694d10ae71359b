"""The grant store in SQL. Alipay merchant grants: one row per (ISV app_id,
authorizing auth_app_id) holding the merchant's app_auth_token and the
refresh token that replaces it.

The grant row, not the token tiers, is the truth about a merchant's token:
the token tiers only cache it. Rotation is one compare-and-set UPDATE on the
old refresh token, so two writers can never both install a pair made from
the same refresh token, and a refresh token that was replaced is never read
back. The table lives in the same SQL store as the credentials; a migration
creates it (run on first use, so no `db upgrade` is needed for a deployment
that adds Alipay later).

With a cipher (secrets at rest), both tokens are stored encrypted; the
compare-and-set then compares the stored ciphertext the row was read with,
since encrypting the same refresh token twice gives different text.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core.domain import Grant
from .sql import ENCRYPTED_COLUMNS, Database


class SecretBox(Protocol):
    def encrypt(self, plaintext: str) -> str: ...

    def decrypt(self, stored: str) -> str: ...

TABLE = "alipay_grant"

# `secrets rotate` / `secrets encrypt` re-encrypt these with the others.
ENCRYPTED_COLUMNS.extend([
    (TABLE, ("app_id", "auth_app_id"), "app_auth_token"),
    (TABLE, ("app_id", "auth_app_id"), "app_refresh_token"),
])

_COLUMNS = ("app_id, auth_app_id, app_auth_token, app_refresh_token, expires_at, refresh_expires_at, "
            "user_id, updated_at")


class SqlGrantStore:
    """The grant store (``core.ports.GrantStore``) in the SQL database."""

    def __init__(self, db: Database, cipher: SecretBox | None = None) -> None:
        self._db = db
        self._cipher = cipher

    def get(self, app_id: str, auth_app_id: str) -> Grant | None:
        rows, _ = self._db.execute(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE app_id = ? AND auth_app_id = ?", (app_id, auth_app_id))
        return self._open(rows[0]) if rows else None

    def list(self, app_id: str) -> list[Grant]:
        rows, _ = self._db.execute(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE app_id = ? ORDER BY auth_app_id", (app_id,))
        return [self._open(r) for r in rows]

    def save(self, grant: Grant) -> None:
        """Insert or replace a merchant's grant (a new authorization supersedes
        whatever pair was stored)."""
        params = (grant.app_id, grant.auth_app_id, self._seal(grant.app_auth_token),
                  self._seal(grant.app_refresh_token), grant.expires_at, grant.refresh_expires_at, grant.user_id,
                  grant.updated_at)
        if self._db.upserts_on_conflict:
            self._db.execute(
                f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (app_id, auth_app_id) DO UPDATE SET app_auth_token = excluded.app_auth_token, "
                "app_refresh_token = excluded.app_refresh_token, expires_at = excluded.expires_at, "
                "refresh_expires_at = excluded.refresh_expires_at, user_id = excluded.user_id, "
                "updated_at = excluded.updated_at", params)
        else:
            self._db.execute(
                f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON DUPLICATE KEY UPDATE app_auth_token = VALUES(app_auth_token), "
                "app_refresh_token = VALUES(app_refresh_token), expires_at = VALUES(expires_at), "
                "refresh_expires_at = VALUES(refresh_expires_at), user_id = VALUES(user_id), "
                "updated_at = VALUES(updated_at)", params)

    def rotate(self, current: Grant, new: Grant) -> bool:
        """Install ``new`` only if the row still holds ``current``'s refresh
        token; False when another writer (a new authorization) got there first."""
        old = current.stored_refresh or current.app_refresh_token
        _, count = self._db.execute(
            f"UPDATE {TABLE} SET app_auth_token = ?, app_refresh_token = ?, expires_at = ?, "
            "refresh_expires_at = ?, user_id = ?, updated_at = ? "
            "WHERE app_id = ? AND auth_app_id = ? AND app_refresh_token = ?",
            (self._seal(new.app_auth_token), self._seal(new.app_refresh_token), new.expires_at,
             new.refresh_expires_at, new.user_id, new.updated_at, current.app_id, current.auth_app_id, old))
        return count == 1

    def remove(self, app_id: str, auth_app_id: str) -> bool:
        _, count = self._db.execute(
            f"DELETE FROM {TABLE} WHERE app_id = ? AND auth_app_id = ?", (app_id, auth_app_id))
        return count > 0


    def _seal(self, value: str) -> str:
        return self._cipher.encrypt(value) if self._cipher else value

    def _open(self, row: tuple[Any, ...]) -> Grant:
        app_id, auth_app_id, token, refresh, expires_at, refresh_expires_at, user_id, updated_at = row
        unseal = self._cipher.decrypt if self._cipher else str
        return Grant(
            app_id=str(app_id), auth_app_id=str(auth_app_id), app_auth_token=unseal(str(token)),
            app_refresh_token=unseal(str(refresh)), expires_at=float(expires_at),
            refresh_expires_at=None if refresh_expires_at is None else float(refresh_expires_at),
            user_id=None if user_id is None else str(user_id), updated_at=float(updated_at),
            stored_refresh=str(refresh),
        )
