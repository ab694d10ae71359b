"""adopt the schema: today's tables, or the original service's platform table

Creates every table that is missing, with the DDL `db init` used before
migrations, and brings tables an earlier version made up to it: the
original Node service's `platform` table gets its timestamp columns and
the (platform, appid) unique key; a `token` table gets the fetched_at
index. Rows are never touched. Each step looks before it acts, so this
revision also runs on a database an earlier version already set up.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MYSQL = " DEFAULT CHARSET=utf8mb4"

TABLES: dict[str, dict[str, str]] = {
    "platform": {
        "mysql": """CREATE TABLE platform (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            secret TEXT NOT NULL,
            created_at DATETIME NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at DATETIME NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
            UNIQUE KEY uq_platform_appid (platform, appid)
        )""" + MYSQL,
        "postgresql": """CREATE TABLE platform (
            id BIGSERIAL PRIMARY KEY,
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            secret TEXT NOT NULL,
            created_at TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP,
            CONSTRAINT uq_platform_appid UNIQUE (platform, appid)
        )""",
        "sqlite": """CREATE TABLE platform (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL,
            appid TEXT NOT NULL,
            secret TEXT NOT NULL,
            created_at TEXT DEFAULT CURRENT_TIMESTAMP,
            updated_at TEXT DEFAULT CURRENT_TIMESTAMP,
            UNIQUE (platform, appid)
        )""",
    },
    "token": {
        "mysql": """CREATE TABLE token (
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            value TEXT NOT NULL,
            expires_at DOUBLE NOT NULL,
            fetched_at DOUBLE NOT NULL,
            final TINYINT NOT NULL DEFAULT 0,
            PRIMARY KEY (platform, appid)
        )""" + MYSQL,
        "postgresql": """CREATE TABLE token (
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            value TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            fetched_at DOUBLE PRECISION NOT NULL,
            final SMALLINT NOT NULL DEFAULT 0,
            PRIMARY KEY (platform, appid)
        )""",
        "sqlite": """CREATE TABLE token (
            platform TEXT NOT NULL,
            appid TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at REAL NOT NULL,
            fetched_at REAL NOT NULL,
            final INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (platform, appid)
        )""",
    },
    "pighand_lock": {
        "mysql": """CREATE TABLE pighand_lock (
            name VARCHAR(191) NOT NULL PRIMARY KEY,
            owner VARCHAR(64) NOT NULL,
            expires_at DOUBLE NOT NULL
        )""" + MYSQL,
        "postgresql": """CREATE TABLE pighand_lock (
            name VARCHAR(191) NOT NULL PRIMARY KEY,
            owner VARCHAR(64) NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "sqlite": """CREATE TABLE pighand_lock (
            name TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
    },
    "refresh_failure": {
        "mysql": """CREATE TABLE refresh_failure (
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            failures INT NOT NULL,
            until DOUBLE NOT NULL,
            errcode VARCHAR(64) NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (platform, appid)
        )""" + MYSQL,
        "postgresql": """CREATE TABLE refresh_failure (
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            failures INTEGER NOT NULL,
            until DOUBLE PRECISION NOT NULL,
            errcode VARCHAR(64) NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (platform, appid)
        )""",
        "sqlite": """CREATE TABLE refresh_failure (
            platform TEXT NOT NULL,
            appid TEXT NOT NULL,
            failures INTEGER NOT NULL,
            until REAL NOT NULL,
            errcode TEXT NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (platform, appid)
        )""",
    },
    "client": {
        "mysql": """CREATE TABLE client (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            key_hash CHAR(64) NOT NULL,
            scopes TEXT NOT NULL,
            created_at DOUBLE NOT NULL,
            last_used_at DOUBLE NULL,
            UNIQUE KEY uq_client_key_hash (key_hash)
        )""" + MYSQL,
        "postgresql": """CREATE TABLE client (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            key_hash CHAR(64) NOT NULL,
            scopes TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            last_used_at DOUBLE PRECISION NULL,
            CONSTRAINT uq_client_key_hash UNIQUE (key_hash)
        )""",
        "sqlite": """CREATE TABLE client (
            name TEXT NOT NULL PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            scopes TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_used_at REAL NULL
        )""",
    },
    "audit_log": {
        "mysql": """CREATE TABLE audit_log (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            at DOUBLE NOT NULL,
            client VARCHAR(64) NULL,
            action VARCHAR(32) NOT NULL,
            platform VARCHAR(32) NULL,
            appid VARCHAR(128) NULL,
            outcome VARCHAR(255) NOT NULL,
            request_id VARCHAR(64) NULL,
            remote_addr VARCHAR(64) NULL
        )""" + MYSQL,
        "postgresql": """CREATE TABLE audit_log (
            id BIGSERIAL PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            client VARCHAR(64) NULL,
            action VARCHAR(32) NOT NULL,
            platform VARCHAR(32) NULL,
            appid VARCHAR(128) NULL,
            outcome VARCHAR(255) NOT NULL,
            request_id VARCHAR(64) NULL,
            remote_addr VARCHAR(64) NULL
        )""",
        "sqlite": """CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            client TEXT NULL,
            action TEXT NOT NULL,
            platform TEXT NULL,
            appid TEXT NULL,
            outcome TEXT NOT NULL,
            request_id TEXT NULL,
            remote_addr TEXT NULL
        )""",
    },
    "pighand_counter": {
        "mysql": """CREATE TABLE pighand_counter (
            name VARCHAR(191) NOT NULL,
            window_start DOUBLE NOT NULL,
            count INT NOT NULL,
            PRIMARY KEY (name, window_start)
        )""" + MYSQL,
        "postgresql": """CREATE TABLE pighand_counter (
            name VARCHAR(191) NOT NULL,
            window_start DOUBLE PRECISION NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (name, window_start)
        )""",
        "sqlite": """CREATE TABLE pighand_counter (
            name TEXT NOT NULL,
            window_start REAL NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (name, window_start)
        )""",
    },
}

# The columns the original service's `platform` table lacks. SQLite cannot
# add a column whose default is CURRENT_TIMESTAMP; the service writes both.
TIMESTAMP_COLUMNS = {
    "mysql": {
        "created_at": "DATETIME NULL DEFAULT CURRENT_TIMESTAMP",
        "updated_at": "DATETIME NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP",
    },
    "postgresql": {"created_at": "TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP",
                   "updated_at": "TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP"},
    "sqlite": {"created_at": "TEXT", "updated_at": "TEXT"},
}

# The token-change follower asks for recently fetched tokens several times a second.
INDEXES = {"token": {"ix_token_fetched_at": ["fetched_at"]}}
UNIQUE = {"platform": {"uq_platform_appid": ["platform", "appid"]}}


def _changed(what: str) -> None:
    context.config.attributes.setdefault("changes", []).append(what)


def _has_unique(inspector: sa.Inspector, table: str, columns: list[str]) -> bool:
    keys: list[list[str | None]] = [list(u["column_names"]) for u in inspector.get_unique_constraints(table)]
    keys += [list(i["column_names"]) for i in inspector.get_indexes(table) if i.get("unique")]
    keys += [list(inspector.get_pk_constraint(table).get("constrained_columns") or [])]
    return any(k == columns for k in keys)


def upgrade() -> None:
    bind = op.get_bind()
    dialect = "mysql" if bind.dialect.name == "mariadb" else bind.dialect.name
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    for table, ddl in TABLES.items():
        if table not in existing:
            op.execute(ddl[dialect])
            if table in INDEXES:
                for name, columns in INDEXES[table].items():
                    op.create_index(name, table, columns)
            continue
        # A table an earlier version (or the original service) made.
        present = {c["name"].lower() for c in inspector.get_columns(table)}
        if table == "platform":
            for column, column_ddl in TIMESTAMP_COLUMNS[dialect].items():
                if column not in present:
                    op.execute(f"ALTER TABLE platform ADD COLUMN {column} {column_ddl}")
                    _changed(f"platform.{column}")
        for name, key_columns in UNIQUE.get(table, {}).items():
            if not _has_unique(inspector, table, key_columns):
                op.create_index(name, table, key_columns, unique=True)
                _changed(f"{table}.{name}")
        for name, index_columns in INDEXES.get(table, {}).items():
            if name not in {i["name"] for i in inspector.get_indexes(table)}:
                op.create_index(name, table, index_columns)
                _changed(f"{table}.{name}")


def downgrade() -> None:
    # The first revision adopts tables that may hold a deployment's only
    # copy of its secrets: it is never undone by a command.
    raise NotImplementedError("the first revision is not reversible")
