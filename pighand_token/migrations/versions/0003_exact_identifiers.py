"""identifiers compare exactly on MySQL/MariaDB

MySQL's default collations ignore case (utf8mb4_general_ci): the platform
table matched ``WXGOOD3`` to the credential ``wxgood3``, which served
wxgood3's token on a path no scope names, and let a failing case variant put
the real app into cooldown. Every identifier column (platforms, appids, lock
and counter names, client names and key hashes) gets its character set's
binary collation, as PostgreSQL and SQLite compare already. Each column keeps
its type, nullability and character set (tables adopted from the original
service included); rows are untouched, and uniqueness can only loosen.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = {
    "platform": ("platform", "appid"),
    "token": ("platform", "appid"),
    "pighand_lock": ("name",),
    "refresh_failure": ("platform", "appid"),
    "client": ("name", "key_hash"),
    "audit_log": ("client", "platform", "appid"),
    "pighand_counter": ("name",),
    "alipay_grant": ("app_id", "auth_app_id", "user_id"),
}


def _collate(binary: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return
    for table, columns in COLUMNS.items():
        rows = bind.execute(sa.text(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, CHARACTER_SET_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"), {"table": table}).fetchall()
        found = {row[0].lower(): row for row in rows}
        changes = []
        for column in columns:
            row = found.get(column)
            if row is None or row[3] is None:  # not there, or not a text column
                continue
            _, column_type, nullable, charset = row
            collation = f"{charset}_bin" if binary else f"{charset}_general_ci"
            changes.append(f"MODIFY `{column}` {column_type} CHARACTER SET {charset} COLLATE {collation} "
                           + ("NULL" if nullable == "YES" else "NOT NULL"))
        if changes:
            op.execute(f"ALTER TABLE `{table}` " + ", ".join(changes))


def upgrade() -> None:
    _collate(binary=True)


def downgrade() -> None:
    _collate(binary=False)
