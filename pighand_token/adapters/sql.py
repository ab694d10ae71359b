"""SQL adapters on SQLAlchemy Core: MySQL/MariaDB (pymysql), PostgreSQL
(psycopg 3) and the embedded SQLite default.

One engine per process, created on first use (never at import, and again in
a process forked after it was made, so no pooled connection is shared
between processes), with a pool that pings a connection before handing it
out and recycles it before a server's idle timeout closes it. The schema is
the Alembic migrations' (``pighand_token.migrations``), upgraded to head on a
process's first use.

The queries are written once with ``?`` placeholders; the few places the
dialects differ (upsert syntax, named locks) look at :attr:`Database.dialect`.
Driver errors leave this module as :class:`Unavailable` (or
:class:`DuplicateKey`) carrying the driver's reason, never the statement, its
parameters or the URL's password.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.url import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ..core.crypto import Cipher, is_encrypted
from ..core.domain import AuditEntry, Client, Cooldown, Credential, Token, TokenKey
from ..core.errors import Conflict, SettingsError, Unavailable
from ..core.ports import Clock, LocalTokenCache
from .follower import Follower

log = logging.getLogger(__name__)

ER_BAD_DB_ERROR = 1049  # MySQL: unknown database
PG_INVALID_CATALOG = "3D000"  # PostgreSQL: database does not exist
PG_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout ran out

# A pooled connection is replaced after this long, before MySQL's
# wait_timeout (or a proxy's idle timeout) closes it under us.
POOL_RECYCLE_S = 1800
DIALECTS = {"mysql": "MySQL", "mariadb": "MySQL", "postgresql": "PostgreSQL", "sqlite": "SQLite"}
# The driver each dialect uses when a URL names none.
DRIVERS = {"mysql": "pymysql", "mariadb": "pymysql", "postgresql": "psycopg", "sqlite": "pysqlite"}


class DuplicateKey(Conflict):
    """An INSERT met a row with the same key (another writer got there first)."""


@dataclass(frozen=True)
class MySQLParams:
    host: str
    port: int
    user: str
    password: str = ""
    database: str = "pighand_token"
    connect_timeout: float = 3.0
    log_statements: bool = False


def database_url(url: str) -> URL:
    """``url`` parsed, with our driver for a dialect it names without one;
    SettingsError (naming ``database_url``, never its password) otherwise."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError("database_url is invalid: expected a URL such as "
                            "postgresql://user:password@host:5432/name") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in DIALECTS:
        raise SettingsError(f"database_url names dialect {backend!r}: allowed values are "
                            "mysql, mariadb, postgresql, sqlite")
    if not driver:
        parsed = parsed.set(drivername=f"{backend}+{DRIVERS[backend]}")
    if backend != "sqlite" and not parsed.database:
        raise SettingsError("database_url names no database (the path after host:port/)")
    return parsed


class Database:
    """The SQL store: one lazily made engine per process, the schema upgraded
    to the migrations' head on first use."""

    def __init__(self, *, sqlite_path: str | None = None, mysql: MySQLParams | None = None,
                 url: str | URL | None = None, connect_timeout: float = 3.0,
                 log_statements: bool = False) -> None:
        if sum(x is not None for x in (sqlite_path, mysql, url)) != 1:
            raise ValueError("give exactly one of sqlite_path, mysql or url")
        if mysql is not None:
            self.url = URL.create("mysql+pymysql", username=mysql.user, password=mysql.password or None,
                                  host=mysql.host, port=mysql.port, database=mysql.database)
            connect_timeout, log_statements = mysql.connect_timeout, mysql.log_statements
        elif sqlite_path is not None:
            self.url = URL.create("sqlite+pysqlite", database=sqlite_path)
        else:
            assert url is not None
            self.url = database_url(url) if isinstance(url, str) else url
        backend = self.url.get_backend_name()
        self.dialect = "mysql" if backend == "mariadb" else backend
        self._connect_timeout = connect_timeout
        self._log_statements = log_statements
        self._engine: Engine | None = None
        self._pid = 0
        self._engine_mutex = threading.Lock()
        self._local = threading.local()
        self._schema_ready = False
        self._schema_mutex = threading.Lock()
        self._upgraded: list[str] = []
        # Why the last write failed for want of space, until one succeeds.
        self.write_failure: str | None = None

    @property
    def description(self) -> str:
        name = DIALECTS[self.url.get_backend_name()]
        if self.dialect == "sqlite":
            return f"{name} {self.url.database}"
        return f"{name} {self.url.host}:{self.url.port or ''}/{self.url.database}"

    @property
    def upserts_on_conflict(self) -> bool:
        """PostgreSQL and SQLite write ``ON CONFLICT``; MySQL ``ON DUPLICATE KEY``."""
        return self.dialect != "mysql"

    # -- the engine --------------------------------------------------------
    def engine(self) -> Engine:
        engine, pid = self._engine, os.getpid()
        if engine is not None and self._pid == pid:
            return engine
        with self._engine_mutex:
            if self._engine is not None and self._pid != pid:
                # Made before this process was forked: the parent owns its
                # connections; drop them here without closing them.
                self._engine.dispose(close=False)
                self._engine = None
            if self._engine is None:
                self._engine = self._create_engine()
                self._pid = pid
            return self._engine

    def _create_engine(self) -> Engine:
        options: dict[str, Any] = dict(
            # Statements commit on their own; transaction() opens one
            # explicitly (BEGIN IMMEDIATE on SQLite, to take the write lock
            # up front), so no pooled connection is returned mid-transaction
            # and the pool needs no ROLLBACK round trip per checkin.
            isolation_level="AUTOCOMMIT", pool_reset_on_return=None, hide_parameters=True,
            pool_pre_ping=True, pool_recycle=POOL_RECYCLE_S,
        )
        if self.dialect == "sqlite":
            path = self.url.database or ""
            memory = path in ("", ":memory:")
            if not memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            options.update(connect_args={"timeout": 15, "check_same_thread": False})
            if memory:
                options.update(poolclass=StaticPool)
            else:
                options.update(pool_size=8, max_overflow=32, pool_timeout=15)
            engine = sa.create_engine(self.url, **options)

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=15000")
                cursor.close()
                _owner_only(path)

            return engine
        options.update(pool_size=8, max_overflow=32, pool_timeout=15)
        if self.dialect == "mysql":
            # client_flag 0: SQLAlchemy would set FOUND_ROWS, and the upserts
            # read the rows *changed* (0 when a newer token was kept).
            options.update(connect_args={"connect_timeout": self._connect_timeout, "read_timeout": 30,
                                         "write_timeout": 30, "client_flag": 0, "charset": "utf8mb4"})
        else:
            options.update(connect_args={"connect_timeout": max(1, round(self._connect_timeout))})
        return sa.create_engine(self.url, **options)

    def _failure(self, exc: SQLAlchemyError, doing: str = "unavailable") -> Unavailable | DuplicateKey:
        orig = getattr(exc, "orig", None)
        reason = _reason(orig) if orig is not None else type(exc).__name__
        if any(words in reason for words in _FULL):
            self.write_failure = reason
        if isinstance(exc, IntegrityError):
            return DuplicateKey(f"{self.description}: {reason}")
        return Unavailable(f"{self.description} {doing}: {reason}")

    def connect(self, *, migrate: bool = True) -> Connection:
        """A pooled connection (the caller closes it); the schema is upgraded
        first unless ``migrate`` is False. Unavailable if the store is down."""
        if migrate and not self._schema_ready:
            self._ensure_schema()
        try:
            return self.engine().connect()
        except SQLAlchemyError as exc:
            raise self._failure(exc, "unavailable") from None

    def _ensure_schema(self) -> None:
        from .. import migrations

        with self._schema_mutex:
            if self._schema_ready:
                return
            self._create_database_if_missing()
            self._upgraded = migrations.upgrade(self)
            self._schema_ready = True

    def _create_database_if_missing(self) -> None:
        """First start against a fresh MySQL or PostgreSQL server: create the database."""
        if self.dialect == "sqlite":
            return
        try:
            self.engine().connect().close()
            return
        except DBAPIError as exc:
            orig = exc.orig
            # psycopg gives no SQLSTATE for a refused connection, only the
            # server's message.
            missing = (_error_code(orig) == ER_BAD_DB_ERROR if self.dialect == "mysql"
                       else getattr(orig, "sqlstate", None) == PG_INVALID_CATALOG
                       or f'database "{self.url.database}" does not exist' in str(orig))
            if not missing:
                raise self._failure(exc, "unavailable") from None
        except SQLAlchemyError as exc:
            raise self._failure(exc, "unavailable") from None
        name = str(self.url.database)
        if self.dialect == "mysql":
            server = self.url._replace(database=None)
            ddl = f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"
        else:
            if '"' in name:
                raise SettingsError(f"database name {name!r} is invalid: it may not contain a double quote")
            server, ddl = self.url.set(database="postgres"), f'CREATE DATABASE "{name}"'
        bare = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
                                connect_args=self._server_connect_args())
        try:
            with bare.connect() as conn:
                conn.exec_driver_sql(ddl)
        except IntegrityError:
            pass  # PostgreSQL: another worker created it at the same moment
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "42P04":  # duplicate_database
                raise self._failure(exc, "unavailable") from None
        except SQLAlchemyError as exc:
            raise self._failure(exc, "unavailable") from None
        finally:
            bare.dispose()

    def _server_connect_args(self) -> dict[str, Any]:
        if self.dialect == "mysql":
            return {"connect_timeout": self._connect_timeout, "client_flag": 0}
        return {"connect_timeout": max(1, round(self._connect_timeout))}

    def close(self) -> None:
        with self._engine_mutex:
            if self._engine is not None:
                self._engine.dispose(close=self._pid == os.getpid())
                self._engine = None

    # -- statements --------------------------------------------------------
    def _sql(self, statement: str) -> str:
        # Queries are written with '?' placeholders; pymysql and psycopg want '%s'.
        return statement if self.dialect == "sqlite" else statement.replace("?", "%s")

    def execute(self, statement: str, params: Sequence[Any] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement; return (rows, rowcount). A connection found
        dropped is replaced once; a store that stays down is Unavailable."""
        sql = self._sql(statement)
        if self._log_statements:
            log.info("sql: %s", sql)
        conn: Connection | None = getattr(self._local, "tx", None)
        if conn is not None:
            try:
                return _run(conn, sql, params)
            except SQLAlchemyError as exc:
                raise self._failure(exc) from None
        for attempt in (1, 2):
            with self.connect() as conn:
                try:
                    return _run(conn, sql, params)
                except DBAPIError as exc:
                    if attempt == 1 and exc.connection_invalidated:
                        continue
                    raise self._failure(exc) from None
                except SQLAlchemyError as exc:
                    raise self._failure(exc) from None
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All statements inside commit together or not at all (a
        transaction opened inside another is part of it)."""
        if getattr(self._local, "tx", None) is not None:
            yield
            return
        conn = self.connect()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        except SQLAlchemyError as exc:
            conn.close()
            raise self._failure(exc) from None
        self._local.tx = conn
        try:
            yield
        except BaseException:
            try:
                conn.exec_driver_sql("ROLLBACK")
            except SQLAlchemyError:
                conn.invalidate()
            raise
        else:
            try:
                conn.exec_driver_sql("COMMIT")
            except SQLAlchemyError as exc:
                conn.invalidate()
                raise self._failure(exc) from None
        finally:
            self._local.tx = None
            conn.close()

    @contextmanager
    def named_lock(self, name: str, *, wait_s: float) -> Iterator[bool]:
        """MySQL ``GET_LOCK`` or a PostgreSQL advisory lock, held on a
        connection of its own until the block ends. The server frees either
        the moment that connection dies, so a killed worker never blocks the
        others."""
        assert self.dialect in ("mysql", "postgresql")
        conn = self.connect()
        acquired = False
        try:
            try:
                acquired = self._lock(conn, name, wait_s)
            except SQLAlchemyError as exc:
                conn.invalidate()
                raise self._failure(exc) from None
            yield acquired
        finally:
            if acquired:
                try:
                    if self.dialect == "mysql":
                        conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (_mysql_lock_name(name),))
                    else:
                        conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (_pg_lock_key(name),))
                except SQLAlchemyError:
                    # The connection is gone, and with it the lock; never
                    # pool a connection that may still hold it.
                    conn.invalidate()
            conn.close()

    def _lock(self, conn: Connection, name: str, wait_s: float) -> bool:
        if self.dialect == "mysql":
            got = conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (_mysql_lock_name(name), max(0.0, wait_s)))
            return bool(got.scalar() == 1)
        key = _pg_lock_key(name)
        if conn.exec_driver_sql("SELECT pg_try_advisory_lock(%s)", (key,)).scalar():
            return True
        if wait_s <= 0:
            return False
        # Wait in the server (no polling): lock_timeout bounds the wait.
        conn.exec_driver_sql("SELECT set_config('lock_timeout', %s, false)", (f"{max(1, int(wait_s * 1000))}ms",))
        try:
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (key,))
            return True
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != PG_LOCK_NOT_AVAILABLE:
                raise
            return False
        finally:
            conn.exec_driver_sql("SELECT set_config('lock_timeout', '0', false)")

    def init_schema(self) -> list[str]:
        """Upgrade the schema to the migrations' head (done on a process's
        first use too). Idempotent. Returns what the upgrade added to tables
        an earlier version (or the original service) made."""
        from .. import migrations

        first = not self._schema_ready
        self._ensure_schema()
        return self._upgraded if first else self._upgraded + migrations.upgrade(self)

    def ping(self) -> None:
        """The store answers, and takes writes: on SQLite a probe row is
        written and deleted (a full disk fails it); elsewhere the last write
        that failed for want of space fails this until a write succeeds."""
        self.execute("SELECT 1")
        if self.dialect == "sqlite":
            self.execute("INSERT OR REPLACE INTO pighand_lock (name, owner, expires_at) VALUES (?, ?, ?)",
                         ("pighand:ready-probe", "readyz", 0.0))
            self.execute("DELETE FROM pighand_lock WHERE name = ?", ("pighand:ready-probe",))
            self.write_failure = None
        elif self.write_failure is not None:
            raise Unavailable(f"{self.description}: writes fail: {self.write_failure}")

    def has_table(self, table: str) -> bool:
        with self.connect() as conn:
            try:
                return bool(sa.inspect(conn).has_table(table))
            except SQLAlchemyError as exc:
                raise self._failure(exc) from None


def _run(conn: Connection, sql: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
    result = conn.exec_driver_sql(sql, tuple(params)) if params else conn.exec_driver_sql(sql)
    rows = [tuple(r) for r in result] if result.returns_rows else []
    return rows, result.rowcount


def _error_code(exc: BaseException | None) -> Any:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    return args[0] if args else None


# How SQLite, MySQL/MariaDB and PostgreSQL say that a write found no space.
_FULL = ("database or disk is full", "The table is full", "No space left on device", "disk full")


def _reason(exc: BaseException) -> str:
    """The driver's own words, first line only (psycopg adds hints below)."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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

    def sealed(self, limit: int | None = None) -> builtins.list[str]:
        """Stored secrets as they are in the table (encrypted ones only),
        to check the configured keys against."""
        statement = "SELECT secret FROM platform WHERE secret LIKE ?"
        rows, _ = self._db.execute(statement + (f" LIMIT {int(limit)}" if limit else ""), ("fernet:%",))
        return [r[0] for r in rows]

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
        if self._db.upserts_on_conflict:
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
        if self._db.upserts_on_conflict:
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

    MySQL: ``GET_LOCK``; PostgreSQL: an advisory lock. The server frees
    either the moment the holder's connection dies, so a killed worker never
    blocks the others. SQLite: a lease row in ``pighand_lock`` taken with a
    conditional upsert; a crashed holder's row is taken over once its lease
    has run out. ``claim`` (a lease that outlives the caller) is the lease row
    on every dialect.
    """

    POLL_S = 0.02

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        if self._db.dialect != "sqlite":
            with self._db.named_lock(name, wait_s=wait_s) as acquired:
                yield acquired
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
                try:
                    self._db.execute("DELETE FROM pighand_lock WHERE name = ? AND owner = ?", (name, owner))
                except Unavailable as exc:  # the lease runs out by itself
                    log.warning("lock %s not released: %s", name, exc.message)

    def claim(self, name: str, *, lease_s: float) -> bool:
        return self._try_lease(name, uuid.uuid4().hex, lease_s)

    def _try_lease(self, name: str, owner: str, lease_s: float) -> bool:
        now = self._clock()
        expires_at = now + lease_s
        if self._db.upserts_on_conflict:
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


def _pg_lock_key(name: str) -> int:
    # Advisory locks are keyed by one signed 64-bit number.
    return int.from_bytes(hashlib.sha256(f"pighand:{name}".encode()).digest()[:8], "big", signed=True)


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
            except (Unavailable, DuplicateKey):
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
