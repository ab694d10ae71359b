"""SQL adapters for MySQL (pymysql) and the embedded SQLite default.

Both dialects share the queries below; the few places they differ (upsert
syntax, placeholders, named locks) are in :class:`Dialect`. A connection is
opened per thread on first use (pymysql and sqlite3 connections are not
thread-safe), never at import time, and the tables are created on the first
connection a process makes.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from ..core.crypto import Cipher, is_encrypted
from ..core.domain import AuditEntry, Client, Cooldown, Credential, Token, TokenKey
from ..core.errors import Conflict, Unavailable
from ..core.ports import Clock, LocalTokenCache
from .follower import Follower

log = logging.getLogger(__name__)

ER_BAD_DB_ERROR = 1049  # MySQL: unknown database

# Table `platform` keeps the original service's name and columns, so rows an
# existing deployment already has are read unchanged.
SCHEMA = {
    "mysql": [
        """CREATE TABLE IF NOT EXISTS platform (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            secret TEXT NOT NULL,
            created_at DATETIME NULL DEFAULT CURRENT_TIMESTAMP,
            updated_at DATETIME NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
            UNIQUE KEY uq_platform_appid (platform, appid)
        ) DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS token (
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            value TEXT NOT NULL,
            expires_at DOUBLE NOT NULL,
            fetched_at DOUBLE NOT NULL,
            final TINYINT NOT NULL DEFAULT 0,
            PRIMARY KEY (platform, appid),
            KEY ix_token_fetched_at (fetched_at)
        ) DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS pighand_lock (
            name VARCHAR(191) NOT NULL PRIMARY KEY,
            owner VARCHAR(64) NOT NULL,
            expires_at DOUBLE NOT NULL
        ) DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS refresh_failure (
            platform VARCHAR(32) NOT NULL,
            appid VARCHAR(128) NOT NULL,
            failures INT NOT NULL,
            until DOUBLE NOT NULL,
            errcode VARCHAR(64) NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (platform, appid)
        ) DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS client (
            name VARCHAR(64) NOT NULL PRIMARY KEY,
            key_hash CHAR(64) NOT NULL,
            scopes TEXT NOT NULL,
            created_at DOUBLE NOT NULL,
            last_used_at DOUBLE NULL,
            UNIQUE KEY uq_client_key_hash (key_hash)
        ) DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS audit_log (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            at DOUBLE NOT NULL,
            client VARCHAR(64) NULL,
            action VARCHAR(32) NOT NULL,
            platform VARCHAR(32) NULL,
            appid VARCHAR(128) NULL,
            outcome VARCHAR(255) NOT NULL,
            request_id VARCHAR(64) NULL,
            remote_addr VARCHAR(64) NULL
        ) DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS pighand_counter (
            name VARCHAR(191) NOT NULL,
            window_start DOUBLE NOT NULL,
            count INT NOT NULL,
            PRIMARY KEY (name, window_start)
        ) DEFAULT CHARSET=utf8mb4""",
    ],
    "sqlite": [
        """CREATE TABLE IF NOT EXISTS platform (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL,
            appid TEXT NOT NULL,
            secret TEXT NOT NULL,
            created_at TEXT DEFAULT CURRENT_TIMESTAMP,
            updated_at TEXT DEFAULT CURRENT_TIMESTAMP,
            UNIQUE (platform, appid)
        )""",
        """CREATE TABLE IF NOT EXISTS token (
            platform TEXT NOT NULL,
            appid TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at REAL NOT NULL,
            fetched_at REAL NOT NULL,
            final INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (platform, appid)
        )""",
        "CREATE INDEX IF NOT EXISTS ix_token_fetched_at ON token (fetched_at)",
        """CREATE TABLE IF NOT EXISTS pighand_lock (
            name TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS refresh_failure (
            platform TEXT NOT NULL,
            appid TEXT NOT NULL,
            failures INTEGER NOT NULL,
            until REAL NOT NULL,
            errcode TEXT NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (platform, appid)
        )""",
        """CREATE TABLE IF NOT EXISTS client (
            name TEXT NOT NULL PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            scopes TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_used_at REAL NULL
        )""",
        """CREATE TABLE IF NOT EXISTS audit_log (
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
        """CREATE TABLE IF NOT EXISTS pighand_counter (
            name TEXT NOT NULL,
            window_start REAL NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (name, window_start)
        )""",
    ],
}

# Columns an older `platform` table may lack; added by `db init`.
TIMESTAMP_COLUMNS = {
    "mysql": {
        "created_at": "DATETIME NULL DEFAULT CURRENT_TIMESTAMP",
        "updated_at": "DATETIME NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP",
    },
    "sqlite": {"created_at": "TEXT", "updated_at": "TEXT"},
}

# Indexes a table made by an earlier version may lack (SQLite's schema above
# adds them itself, with IF NOT EXISTS, which MySQL does not have): the
# token-change follower asks for recently fetched tokens several times a second.
INDEXES = {"token": {"ix_token_fetched_at": "fetched_at"}}


@dataclass(frozen=True)
class MySQLParams:
    host: str
    port: int
    user: str
    password: str = ""
    database: str = "pighand_token"
    connect_timeout: float = 3.0
    log_statements: bool = False


class Database:
    """A per-thread connection to MySQL or SQLite, with the schema ensured."""

    def __init__(self, *, sqlite_path: str | None = None, mysql: MySQLParams | None = None) -> None:
        if (sqlite_path is None) == (mysql is None):
            raise ValueError("give exactly one of sqlite_path or mysql")
        self.dialect = "mysql" if mysql else "sqlite"
        self._sqlite_path = sqlite_path
        self._mysql = mysql
        self._local = threading.local()
        self._schema_ready = False
        self._schema_mutex = threading.Lock()
        self._upgraded: list[str] = []

    @property
    def description(self) -> str:
        if self._mysql:
            return f"MySQL {self._mysql.host}:{self._mysql.port}/{self._mysql.database}"
        return f"SQLite {self._sqlite_path}"

    # -- connections -------------------------------------------------------
    def _connect(self) -> Any:
        if self._mysql:
            p = self._mysql
            options: dict[str, Any] = dict(
                host=p.host, port=p.port, user=p.user, password=p.password, autocommit=True,
                charset="utf8mb4", connect_timeout=p.connect_timeout, read_timeout=30, write_timeout=30,
            )
            try:
                try:
                    return pymysql.connect(database=p.database, **options)
                except pymysql.OperationalError as exc:
                    if exc.args[0] != ER_BAD_DB_ERROR:
                        raise
                # First start against a fresh server: create the database.
                bare = pymysql.connect(**options)
                with bare.cursor() as cur:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{p.database}` CHARACTER SET utf8mb4")
                bare.close()
                return pymysql.connect(database=p.database, **options)
            except pymysql.MySQLError as exc:
                raise Unavailable(f"cannot connect to {self.description}: {_mysql_reason(exc)}") from None
        assert self._sqlite_path is not None
        path = Path(self._sqlite_path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=15, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=15000")
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open {self.description}: {exc}") from None
        _owner_only(str(path))
        return conn

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            if not self._schema_ready:
                self._create_schema(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass

    def _create_schema(self, conn: Any) -> None:
        with self._schema_mutex:
            if self._schema_ready:
                return
            cur = conn.cursor()
            for statement in SCHEMA[self.dialect]:
                cur.execute(statement)
            self._upgraded = self._upgrade()
            self._schema_ready = True

    def close(self) -> None:
        self._drop_conn()

    # -- statements --------------------------------------------------------
    def _sql(self, statement: str) -> str:
        # Queries are written with '?' placeholders; pymysql wants '%s'.
        return statement.replace("?", "%s") if self.dialect == "mysql" else statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement; return (rows, rowcount). Retries once on a
        dropped connection (MySQL closes idle ones), else Unavailable."""
        sql = self._sql(statement)
        if self._mysql and self._mysql.log_statements:
            log.info("sql: %s", sql)
        for attempt in (1, 2):
            try:
                cur = self._conn().cursor()
                cur.execute(sql, tuple(params))
                rows = list(cur.fetchall()) if cur.description else []
                return rows, cur.rowcount
            except (pymysql.OperationalError, pymysql.InterfaceError) as exc:
                self._drop_conn()
                if attempt == 2:
                    raise Unavailable(f"{self.description} unavailable: {_mysql_reason(exc)}") from None
            except sqlite3.OperationalError as exc:
                raise Unavailable(f"{self.description} unavailable: {exc}") from None
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all."""
        try:
            conn = self._conn()
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.begin()
        except (pymysql.MySQLError, sqlite3.Error) as exc:
            self._drop_conn()
            raise Unavailable(f"{self.description} unavailable: {exc}") from None
        try:
            yield
        except BaseException:
            try:
                conn.rollback()
            except (pymysql.MySQLError, sqlite3.Error):
                self._drop_conn()
            raise
        else:
            conn.commit()

    def init_schema(self) -> list[str]:
        """Create missing tables and add the timestamp columns an original
        `platform` table lacks and the indexes an earlier version's tables
        lack (done on a process's first connection too). Idempotent. Returns
        what it changed."""
        self._conn()
        return self._upgraded + self._upgrade()

    def _upgrade(self) -> list[str]:
        return self._add_missing_columns() + self._add_missing_indexes()

    def _add_missing_columns(self) -> list[str]:
        changed: list[str] = []
        existing = self._columns("platform")
        for column, ddl in TIMESTAMP_COLUMNS[self.dialect].items():
            if column not in existing:
                try:
                    self.execute(f"ALTER TABLE platform ADD COLUMN {column} {ddl}")
                except (Unavailable, pymysql.MySQLError):
                    # Another worker starting at the same moment added it first.
                    if column not in self._columns("platform"):
                        raise
                    continue
                changed.append(f"platform.{column}")
        return changed

    def _add_missing_indexes(self) -> list[str]:
        if self.dialect != "mysql":
            return []
        changed: list[str] = []
        for table, indexes in INDEXES.items():
            for name, columns in indexes.items():
                if name in self._indexes(table):
                    continue
                try:
                    self.execute(f"CREATE INDEX {name} ON {table} ({columns})")
                except (Unavailable, pymysql.MySQLError):
                    # Another worker starting at the same moment added it first.
                    if name not in self._indexes(table):
                        raise
                    continue
                changed.append(f"{table}.{name}")
        return changed

    def _indexes(self, table: str) -> set[str]:
        rows, _ = self.execute(
            "SELECT DISTINCT index_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE() AND table_name = ?", (table,))
        return {r[0].lower() for r in rows}

    def _columns(self, table: str) -> set[str]:
        if self.dialect == "sqlite":
            rows, _ = self.execute(f"PRAGMA table_info({table})")
            return {r[1] for r in rows}
        rows, _ = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?",
            (table,),
        )
        return {r[0].lower() for r in rows}

    def ping(self) -> None:
        self.execute("SELECT 1")

    def has_table(self, table: str) -> bool:
        if self.dialect == "sqlite":
            rows, _ = self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        else:
            rows, _ = self.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                (table,))
        return bool(rows)


def _mysql_reason(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2:
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__


def _now_text() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


class SqlCredentialRepository:
    """Secrets are encrypted with ``cipher`` on write and decrypted on read;
    a plaintext row (the original service's) is read as it is."""

    def __init__(self, db: Database, cipher: Cipher | None = None) -> None:
        self._db = db
        self._cipher = cipher

    def _open(self, row: tuple[Any, ...]) -> Credential:
        platform, appid, secret = row
        return Credential(platform, appid, self._cipher.decrypt(secret) if self._cipher else secret)

    def _seal(self, secret: str) -> str:
        return self._cipher.encrypt(secret) if self._cipher else secret

    def get(self, platform: str, appid: str) -> Credential | None:
        rows, _ = self._db.execute(
            "SELECT platform, appid, secret FROM platform WHERE platform = ? AND appid = ?", (platform, appid)
        )
        return self._open(rows[0]) if rows else None

    def list(self) -> list[Credential]:
        rows, _ = self._db.execute("SELECT platform, appid, secret FROM platform ORDER BY platform, appid")
        return [self._open(r) for r in rows]

    def keys(self) -> builtins.list[tuple[str, str]]:
        """(platform, appid) of every credential, without touching secrets."""
        rows, _ = self._db.execute("SELECT platform, appid FROM platform ORDER BY platform, appid")
        return [(r[0], r[1]) for r in rows]

    def add(self, credential: Credential, *, update: bool = False) -> None:
        self.add_many([credential], update=update)

    def add_many(self, credentials: Iterable[Credential], *, update: bool = False) -> int:
        batch = list(credentials)
        now = _now_text()
        with self._db.transaction():
            for c in batch:
                rows, _ = self._db.execute(
                    "SELECT 1 FROM platform WHERE platform = ? AND appid = ?", (c.platform, c.appid)
                )
                if rows and not update:
                    raise Conflict(f"{c.platform} appid {c.appid!r} already exists (use --update to replace it)")
                if rows:
                    self._db.execute(
                        "UPDATE platform SET secret = ?, updated_at = ? WHERE platform = ? AND appid = ?",
                        (self._seal(c.secret), now, c.platform, c.appid),
                    )
                else:
                    self._db.execute(
                        "INSERT INTO platform (platform, appid, secret, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                        (c.platform, c.appid, self._seal(c.secret), now, now),
                    )
        return len(batch)

    def remove(self, platform: str, appid: str) -> bool:
        _, count = self._db.execute("DELETE FROM platform WHERE platform = ? AND appid = ?", (platform, appid))
        return count > 0

    def timestamps(self) -> dict[tuple[str, str], tuple[Any, Any]]:
        rows, _ = self._db.execute("SELECT platform, appid, created_at, updated_at FROM platform")
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}


class SqlTokenStore:
    name = "sql"
    shared = True

    def __init__(self, db: Database, cipher: Cipher | None = None) -> None:
        self._db = db
        self._cipher = cipher

    def get(self, key: TokenKey) -> Token | None:
        rows, _ = self._db.execute(
            "SELECT value, expires_at, fetched_at, final FROM token WHERE platform = ? AND appid = ?",
            (key.platform, key.appid),
        )
        if not rows:
            return None
        value, expires_at, fetched_at, final = rows[0]
        if self._cipher:
            value = self._cipher.decrypt(value)
        return Token(value=value, expires_at=float(expires_at), fetched_at=float(fetched_at), final=bool(final))

    def put(self, key: TokenKey, token: Token) -> bool:
        value = self._cipher.encrypt(token.value) if self._cipher else token.value
        params = (key.platform, key.appid, value, token.expires_at, token.fetched_at, int(token.final))
        if self._db.dialect == "sqlite":
            _, count = self._db.execute(
                "INSERT INTO token (platform, appid, value, expires_at, fetched_at, final) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (platform, appid) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at, fetched_at = excluded.fetched_at, final = excluded.final "
                "WHERE excluded.fetched_at > token.fetched_at",
                params,
            )
            return count > 0
        # MySQL applies the assignments left to right, so fetched_at goes last:
        # the earlier comparisons must still see the stored value.
        _, count = self._db.execute(
            "INSERT INTO token (platform, appid, value, expires_at, fetched_at, final) VALUES (?, ?, ?, ?, ?, ?) "
            "ON DUPLICATE KEY UPDATE "
            "value = IF(VALUES(fetched_at) > fetched_at, VALUES(value), value), "
            "expires_at = IF(VALUES(fetched_at) > fetched_at, VALUES(expires_at), expires_at), "
            "final = IF(VALUES(fetched_at) > fetched_at, VALUES(final), final), "
            "fetched_at = GREATEST(fetched_at, VALUES(fetched_at))",
            params,
        )
        return count > 0

    def delete(self, key: TokenKey) -> None:
        self._db.execute("DELETE FROM token WHERE platform = ? AND appid = ?", (key.platform, key.appid))

    def discard_older(self, key: TokenKey, fetched_at: float) -> None:
        self._db.execute("DELETE FROM token WHERE platform = ? AND appid = ? AND fetched_at < ?",
                         (key.platform, key.appid, fetched_at))

    def fetched_since(self, since: float | None) -> list[tuple[TokenKey, float]]:
        """(key, fetched_at) of every stored token fetched after ``since``
        (None: every token); a range on the fetched_at index, values unread."""
        query = "SELECT platform, appid, fetched_at FROM token"
        rows, _ = (self._db.execute(query) if since is None
                   else self._db.execute(query + " WHERE fetched_at > ?", (since,)))
        return [(TokenKey(r[0], r[1]), float(r[2])) for r in rows]


class SqlTokenChanges(Follower):
    """Without Redis: polls the token table for tokens fetched recently and
    drops, from this worker's memory, each token such a write replaced.

    The query asks for tokens fetched after the newest fetched_at seen so far
    (or this machine's clock, if that is earlier) less ``window_s``: a token
    is stored up to a platform call after its fetched_at (which is taken
    when the call starts), and the instances' clocks may differ, so a write
    is still seen if it lands within the window. Rows inside the window are
    read again on each poll; dropping is idempotent, so that costs only the
    read. Deleted rows are not seen: the memory's TTL covers those.
    """

    def __init__(self, store: SqlTokenStore, cache: LocalTokenCache, *, clock: Clock, interval_s: float = 0.25,
                 window_s: float = 60.0) -> None:
        super().__init__("sql token changes")
        self._store = store
        self._cache = cache
        self._clock = clock
        self._interval_s = interval_s
        self._window_s = window_s
        self._newest: float | None = None  # None: the first poll reads every row once

    def _follow(self) -> None:
        while not self._stopping.is_set():
            self.poll()
            self._recovered()
            self._stopping.wait(self._interval_s)

    def poll(self) -> None:
        """One look at the table (the thread does this every ``interval_s``)."""
        since = None if self._newest is None else min(self._newest, self._clock()) - self._window_s
        newest = self._newest
        for key, fetched_at in self._store.fetched_since(since):
            self._cache.drop_older(key, fetched_at)
            if newest is None or fetched_at > newest:
                newest = fetched_at
        # An empty table: from now on, the window before this machine's clock.
        self._newest = newest if newest is not None else self._clock()


class SqlCooldowns:
    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, key: TokenKey) -> Cooldown | None:
        rows, _ = self._db.execute(
            "SELECT failures, until, message, errcode FROM refresh_failure WHERE platform = ? AND appid = ?",
            (key.platform, key.appid),
        )
        if not rows:
            return None
        failures, until, message, errcode = rows[0]
        return Cooldown(int(failures), float(until), message, _errcode(errcode))

    def record(self, key: TokenKey, cooldown: Cooldown) -> None:
        errcode = None if cooldown.errcode is None else str(cooldown.errcode)
        params = (key.platform, key.appid, cooldown.failures, cooldown.until, errcode, cooldown.message)
        if self._db.dialect == "sqlite":
            self._db.execute(
                "INSERT INTO refresh_failure (platform, appid, failures, until, errcode, message) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (platform, appid) DO UPDATE SET "
                "failures = excluded.failures, until = excluded.until, errcode = excluded.errcode, "
                "message = excluded.message", params)
        else:
            self._db.execute(
                "INSERT INTO refresh_failure (platform, appid, failures, until, errcode, message) "
                "VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE failures = VALUES(failures), "
                "until = VALUES(until), errcode = VALUES(errcode), message = VALUES(message)", params)

    def clear(self, key: TokenKey) -> None:
        self._db.execute("DELETE FROM refresh_failure WHERE platform = ? AND appid = ?", (key.platform, key.appid))


def _errcode(raw: Any) -> int | str | None:
    if raw is None:
        return None
    text = str(raw)
    try:
        return int(text)
    except ValueError:
        return text


class SqlLocks:
    """Cross-process locks kept in the SQL store (used when there is no Redis).

    MySQL: ``GET_LOCK``, which the server frees the moment the holder's
    connection dies, so a killed worker never blocks the others. SQLite: a
    lease row in ``pighand_lock`` taken with a conditional upsert; a crashed
    holder's row is taken over once its lease has run out.
    """

    POLL_S = 0.02

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        if self._db.dialect == "mysql":
            lock_name = _mysql_lock_name(name)
            rows, _ = self._db.execute("SELECT GET_LOCK(?, ?)", (lock_name, max(0.0, wait_s)))
            acquired = bool(rows and rows[0][0] == 1)
            try:
                yield acquired
            finally:
                if acquired:
                    try:
                        self._db.execute("SELECT RELEASE_LOCK(?)", (lock_name,))
                    except Unavailable:
                        # The connection is gone, and with it the lock.
                        pass
            return
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        acquired = self._try_lease(name, owner, lease_s)
        while not acquired and time.monotonic() < deadline:
            time.sleep(self.POLL_S)
            acquired = self._try_lease(name, owner, lease_s)
        try:
            yield acquired
        finally:
            if acquired:
                self._db.execute("DELETE FROM pighand_lock WHERE name = ? AND owner = ?", (name, owner))

    def claim(self, name: str, *, lease_s: float) -> bool:
        return self._try_lease(name, uuid.uuid4().hex, lease_s)

    def _try_lease(self, name: str, owner: str, lease_s: float) -> bool:
        now = self._clock()
        expires_at = now + lease_s
        if self._db.dialect == "sqlite":
            _, count = self._db.execute(
                "INSERT INTO pighand_lock (name, owner, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE pighand_lock.expires_at <= ?",
                (name, owner, expires_at, now),
            )
            return count > 0
        # owner is assigned before expires_at, so both conditions see the old row.
        self._db.execute(
            "INSERT INTO pighand_lock (name, owner, expires_at) VALUES (?, ?, ?) "
            "ON DUPLICATE KEY UPDATE owner = IF(expires_at <= ?, VALUES(owner), owner), "
            "expires_at = IF(owner = VALUES(owner), VALUES(expires_at), expires_at)",
            (name, owner, expires_at, now),
        )
        rows, _ = self._db.execute("SELECT owner FROM pighand_lock WHERE name = ?", (name,))
        return bool(rows and rows[0][0] == owner)


def _mysql_lock_name(name: str) -> str:
    # GET_LOCK names are limited to 64 characters.
    full = f"pighand:{name}"
    if len(full) <= 64:
        return full
    return "pighand:" + hashlib.sha256(name.encode()).hexdigest()[:48]


def _owner_only(path: str) -> None:
    """The SQLite file holds secrets: keep it readable by its owner only."""
    if path != ":memory:" and os.path.exists(path):
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass


class SqlClients:
    def __init__(self, db: Database) -> None:
        self._db = db

    def list(self) -> list[Client]:
        rows, _ = self._db.execute(
            "SELECT name, key_hash, scopes, created_at, last_used_at FROM client ORDER BY name")
        return [Client(r[0], r[1], tuple(s for s in r[2].split(" ") if s), float(r[3]),
                       None if r[4] is None else float(r[4])) for r in rows]

    def add(self, client: Client) -> None:
        with self._db.transaction():
            rows, _ = self._db.execute("SELECT 1 FROM client WHERE name = ?", (client.name,))
            if rows:
                raise Conflict(f"client {client.name!r} already exists (revoke it first to issue a new key)")
            self._db.execute(
                "INSERT INTO client (name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?)",
                (client.name, client.key_hash, " ".join(client.scopes), client.created_at))

    def remove(self, name: str) -> bool:
        _, count = self._db.execute("DELETE FROM client WHERE name = ?", (name,))
        return count > 0

    def touch(self, name: str, at: float) -> None:
        self._db.execute("UPDATE client SET last_used_at = ? WHERE name = ?", (at, name))


class SqlAuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    def record(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit_log (at, client, action, platform, appid, outcome, request_id, remote_addr) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.at, entry.client, entry.action, entry.platform, entry.appid, entry.outcome[:255],
             entry.request_id, entry.remote_addr))

    def tail(self, count: int) -> list[AuditEntry]:
        rows, _ = self._db.execute(
            "SELECT at, action, outcome, client, platform, appid, request_id, remote_addr FROM audit_log "
            f"ORDER BY id DESC LIMIT {int(count)}")
        return [AuditEntry(float(r[0]), *r[1:]) for r in reversed(rows)]


class SqlCounters:
    """Fixed-window counters in SQL (rate limits without Redis)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def hit(self, name: str, *, limit: int, window_start: float, window_end: float, now: float) -> float | None:
        for _ in range(3):
            _, count = self._db.execute(
                "UPDATE pighand_counter SET count = count + 1 WHERE name = ? AND window_start = ? AND count < ?",
                (name, window_start, limit))
            if count:
                return None
            rows, _ = self._db.execute(
                "SELECT count FROM pighand_counter WHERE name = ? AND window_start = ?", (name, window_start))
            if rows:
                return max(0.0, window_end - now)
            self._db.execute("DELETE FROM pighand_counter WHERE name = ? AND window_start < ?",
                             (name, window_start))
            try:
                self._db.execute("INSERT INTO pighand_counter (name, window_start, count) VALUES (?, ?, 1)",
                                 (name, window_start))
                return None
            except (Unavailable, pymysql.MySQLError, sqlite3.Error):
                continue  # another worker inserted the window first: count again
        return max(0.0, window_end - now)


# Every column that holds a secret, as (table, key columns, column). Other
# adapters that keep secrets (Alipay grants) add theirs.
ENCRYPTED_COLUMNS: list[tuple[str, tuple[str, ...], str]] = [
    ("platform", ("platform", "appid"), "secret"),
    ("token", ("platform", "appid"), "value"),
]


def reencrypt(db: Database, cipher: Cipher, *, only_plaintext: bool) -> dict[str, int]:
    """Re-encrypt stored secrets with the cipher's first key, in one
    transaction; ``only_plaintext`` converts just the rows the original
    service wrote in plain text. Returns rows changed per table."""
    changed: dict[str, int] = {}
    db.init_schema()
    with db.transaction():
        for table, keys, column in ENCRYPTED_COLUMNS:
            if not db.has_table(table):
                continue
            rows, _ = db.execute(f"SELECT {', '.join(keys)}, {column} FROM {table}")
            for row in rows:
                value = row[-1]
                if value is None or (only_plaintext and is_encrypted(value)):
                    continue
                where = " AND ".join(f"{k} = ?" for k in keys)
                db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (cipher.rotate(value), *row[:-1]))
                changed[table] = changed.get(table, 0) + 1
    return changed
