"""The SQL schema as Alembic migrations, run from our settings (no alembic.ini).

``upgrade(db)`` brings a database to head: an empty one, one an earlier
version made with ``db init``, or the original Node service's ``platform``
table (its rows untouched). It runs on a process's first use of the store
and from ``pighand-token db upgrade``; concurrent upgrades by several workers
wait for each other on a named lock (MySQL ``GET_LOCK``, a PostgreSQL
advisory lock, a file lock beside a SQLite database).

A database already at head costs one ``SELECT`` of the version table and
no Alembic import: Alembic (and Mako, and Pygments) is about 12 MB of a
served worker's memory, loaded only when there is something to upgrade or
a ``db`` command asks.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..core.errors import Unavailable

if TYPE_CHECKING:
    from alembic.config import Config

    from ..adapters.sql import Database

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "pighand_alembic_version"
LOCK_NAME = "pighand:migrate"
# The newest revision in versions/ (a test holds it to Alembic's head).
HEAD = "0004"


@dataclass(frozen=True)
class Revision:
    id: str
    title: str
    is_head: bool


def _config(connection: Connection | None = None, changes: list[str] | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    config.attributes["changes"] = changes if changes is not None else []
    return config


def upgrade(db: Database, revision: str = "head") -> list[str]:
    """Upgrade ``db`` to ``revision``; return what was added to tables that
    already existed (columns, keys, indexes), as ``table.name``."""
    if revision in ("head", HEAD) and at_head(db):
        return []
    from alembic import command

    changes: list[str] = []
    with _exclusive(db) as conn:
        try:
            command.upgrade(_config(conn, changes), revision)
        except SQLAlchemyError as exc:
            raise db._failure(exc, "upgrade failed") from None
    return changes


def at_head(db: Database) -> bool:
    """Whether the database is at HEAD, read from the version table (no
    Alembic); False when the table is missing or the database is down (the
    upgrade then tells why)."""
    try:
        conn = db.connect(migrate=False)
    except Unavailable:  # upgrade() reports it
        return False
    try:
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).fetchall()
    except SQLAlchemyError:
        conn.invalidate()  # PostgreSQL: the failed statement spoils the connection
        return False
    finally:
        conn.close()
    return [row[0] for row in rows] == [HEAD]


def current(db: Database) -> str | None:
    """The database's revision (None: never upgraded), without upgrading it."""
    from alembic.runtime.migration import MigrationContext

    conn = db.connect(migrate=False)
    try:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    except SQLAlchemyError as exc:
        raise db._failure(exc) from None
    finally:
        conn.close()


def history() -> list[Revision]:
    """Every revision, oldest first."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    heads = set(script.get_heads())
    revisions = [Revision(r.revision, (r.doc or "").strip().splitlines()[0] if r.doc else "", r.revision in heads)
                 for r in script.walk_revisions()]
    return list(reversed(revisions))


def head() -> str:
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_config()).get_current_head())


@contextmanager
def _exclusive(db: Database) -> Iterator[Connection]:
    """A connection on which no other process is upgrading the same database."""
    conn = db.connect(migrate=False)
    try:
        if db.dialect == "mysql":
            # GET_LOCK names are server-wide: one lock per database.
            conn.exec_driver_sql("SELECT GET_LOCK(%s, 120)", (_mysql_name(db),))
        elif db.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_lock(%s)", (_pg_key(LOCK_NAME),))
        path = db.url.database or ""
        if db.dialect == "sqlite" and path not in ("", ":memory:"):
            with open(f"{path}.migrate-lock", "a") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    yield conn
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        else:
            yield conn
    except SQLAlchemyError as exc:
        conn.invalidate()
        raise db._failure(exc, "upgrade failed") from None
    finally:
        # Closing the connection would free the lock too; release it
        # explicitly so the pooled connection holds nothing.
        try:
            if db.dialect == "mysql":
                conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (_mysql_name(db),))
            elif db.dialect == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (_pg_key(LOCK_NAME),))
        except SQLAlchemyError:
            conn.invalidate()
        conn.close()


def _pg_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _mysql_name(db: Database) -> str:
    return f"{LOCK_NAME}:{db.url.database}"[:64]
