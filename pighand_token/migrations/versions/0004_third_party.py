"""third-party apps: pushed_ticket and account_grant

``pushed_ticket`` holds, per third-party app, the latest ticket its platform
pushed (WeChat component_verify_ticket, WeCom suite_ticket).
``account_grant`` holds, per (token platform, app, authorizing account), the
secret the platform handed over once for that account (WeChat
authorizer_refresh_token, WeCom permanent_code). Both are the only copy of
what they hold, so they live in SQL next to the credentials; identifiers
compare exactly (binary collation on MySQL/MariaDB, as revision 0003 made
every other identifier).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

REAL = {"mysql": "DOUBLE", "postgresql": "DOUBLE PRECISION", "sqlite": "REAL"}


def _key(dialect: str, length: int) -> str:
    if dialect == "mysql":
        return f"VARCHAR({length}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    return "TEXT" if dialect == "sqlite" else f"VARCHAR({length})"


def _text(dialect: str) -> str:
    # Compared by the grant's compare-and-set: exactly, never ignoring case.
    return "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if dialect == "mysql" else "TEXT"


def upgrade() -> None:
    bind = op.get_bind()
    dialect = "mysql" if bind.dialect.name == "mariadb" else bind.dialect.name
    real = REAL[dialect]
    tail = " DEFAULT CHARSET=utf8mb4" if dialect == "mysql" else ""
    tables = set(sa.inspect(bind).get_table_names())
    # A database taken back to an earlier revision by hand keeps its tables.
    if "pushed_ticket" not in tables:
        op.execute(f"""CREATE TABLE pushed_ticket (
        platform {_key(dialect, 32)} NOT NULL,
        appid {_key(dialect, 128)} NOT NULL,
        ticket TEXT NOT NULL,
        created_at {real} NOT NULL,
        expires_at {real} NOT NULL,
        received_at {real} NOT NULL,
        PRIMARY KEY (platform, appid)
    )""" + tail)
    if "account_grant" not in tables:
        op.execute(f"""CREATE TABLE account_grant (
        platform {_key(dialect, 32)} NOT NULL,
        owner {_key(dialect, 128)} NOT NULL,
        account {_key(dialect, 128)} NOT NULL,
        secret {_text(dialect)} NOT NULL,
        info TEXT NOT NULL,
        authorized_at {real} NOT NULL,
        updated_at {real} NOT NULL,
        PRIMARY KEY (platform, owner, account)
    )""" + tail)


def downgrade() -> None:
    op.drop_table("account_grant")
    op.drop_table("pushed_ticket")
