"""The Alembic migrations on real MariaDB, PostgreSQL and SQLite: an empty
database, one made by `db init` before migrations, and the original Node
service's `platform` table with rows all reach the same schema, their rows
untouched; `db current` and `db history` report it."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pighand_token import migrations
from pighand_token.adapters.sql import Database, MySQLParams
from tests.conftest import MYSQL, ROOT, clean_env, postgres_url, run_cli

DIALECTS = ["sqlite", "mysql", "postgres"]
FIRST = importlib.import_module("pighand_token.migrations.versions.0001_adopt_schema")
GRANTS = importlib.import_module("pighand_token.migrations.versions.0002_grant_store")

ORIGINAL_PLATFORM_TABLE = {
    "sqlite": "CREATE TABLE platform (id INTEGER PRIMARY KEY AUTOINCREMENT, platform TEXT, appid TEXT, secret TEXT)",
    "mysql": "CREATE TABLE platform (id INT AUTO_INCREMENT PRIMARY KEY, platform VARCHAR(32), "
             "appid VARCHAR(64), secret VARCHAR(128))",
    "postgresql": "CREATE TABLE platform (id SERIAL PRIMARY KEY, platform VARCHAR(32), appid VARCHAR(64), "
                  "secret VARCHAR(128))",
}
ORIGINAL_ROWS = [("wechat", "wx_app_1", "plain-secret-1"), ("wechat", "wx_app_2", "plain-secret-2"),
                 ("feishu", "cli_a1", "plain-secret-3")]


@dataclass
class Store:
    kind: str
    db: Database
    settings: dict[str, Any]

    def raw(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A statement outside the service's code, as another tool would run it."""
        engine = sa.create_engine(self.db.url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as conn:
                result = conn.exec_driver_sql(self.db._sql(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def schema(self) -> dict[str, tuple[list[str], set[tuple[str, ...]], set[tuple[str, ...]]]]:
        """Per table: column names, unique keys and other indexes (as column tuples)."""
        engine = sa.create_engine(self.db.url, poolclass=sa.pool.NullPool)
        try:
            inspector = sa.inspect(engine)
            shape = {}
            for table in inspector.get_table_names():
                if table == migrations.VERSION_TABLE:
                    continue
                unique = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)}
                unique |= {tuple(i["column_names"]) for i in inspector.get_indexes(table) if i["unique"]}
                others = {tuple(i["column_names"]) for i in inspector.get_indexes(table) if not i["unique"]}
                shape[table] = (sorted(c["name"] for c in inspector.get_columns(table)), unique, others)
            return shape
        finally:
            engine.dispose()

    def cli(self, *args: str) -> str:
        result = run_cli(*args, env=clean_env(**self.settings))
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(params=DIALECTS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty database of this test's own (dropped afterwards by its fixture)."""
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    if request.param == "mysql":
        name = request.getfixturevalue("mysql_db")
        db = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], database=name))
        settings.update(mysql_host=MYSQL["host"], mysql_port=MYSQL["port"], mysql_database=name)
    elif request.param == "postgres":
        url = postgres_url(request.getfixturevalue("pg_db"))
        db = Database(url=url)
        settings.update(database_url=url)
    else:
        db = Database(sqlite_path=settings["sqlite_path"])
    yield Store(str(request.param), db, settings)
    db.close()


TABLES = {"platform", "token", "pighand_lock", "refresh_failure", "client", "audit_log", "pighand_counter",
          "alipay_grant", "pushed_ticket", "account_grant"}


def test_an_empty_database_is_upgraded_to_head_and_db_current_and_history_say_so(store: Store) -> None:
    assert "no revision" in store.cli("db", "current")
    out = store.cli("db", "upgrade")
    assert f"at revision {migrations.head()}" in out and "added" not in out
    assert migrations.current(store.db) == migrations.head()
    assert f": {migrations.head()} (head)" in store.cli("db", "current")
    history = store.cli("db", "history").splitlines()
    assert [line.split()[0] for line in history] == ["0001", "0002", "0003", "0004"]
    assert history[-1].endswith("(head)") and "adopt the schema" in history[0]
    shape = store.schema()
    assert set(shape) == TABLES
    assert ("platform", "appid") in shape["platform"][1]
    assert ("fetched_at",) in shape["token"][2]
    assert {"created_at", "updated_at", "secret"} <= set(shape["platform"][0])
    # Upgrading again changes nothing.
    assert "added" not in store.cli("db", "init")
    assert store.schema() == shape


def test_head_names_alembics_head_and_a_database_at_head_opens_without_alembic(store: Store) -> None:
    assert migrations.HEAD == migrations.head()
    store.cli("db", "upgrade")
    # A new process (a served worker, a command) using the store: one
    # SELECT of the version table, no Alembic in its memory.
    probe = ("import sys; from pighand_token.adapters.sql import Database; "
             f"db = Database(url={str(store.db.url.render_as_string(hide_password=False))!r}); "
             "db.connect().close(); print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # One revision behind: the same first use upgrades it.
    store.raw(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0001'")
    store.raw("DROP TABLE alipay_grant")
    assert not migrations.at_head(store.db)
    store.db.connect().close()
    assert migrations.current(store.db) == migrations.HEAD and "alipay_grant" in store.schema()


def _today_db_init(store: Store) -> None:
    """The tables `db init` made before migrations: the same DDL, no version table."""
    dialect = store.db.dialect
    for ddl in FIRST.TABLES.values():
        store.raw(ddl[dialect])
    store.raw("CREATE INDEX ix_token_fetched_at ON token (fetched_at)")


def test_a_database_made_by_db_init_before_migrations_keeps_its_rows(store: Store, tmp_path: Path) -> None:
    _today_db_init(store)
    store.raw("INSERT INTO platform (platform, appid, secret, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
              ("wechat", "wx_app_1", "fernet:stored", "2024-01-02 03:04:05", "2024-01-02 03:04:05"))
    store.raw("INSERT INTO token (platform, appid, value, expires_at, fetched_at, final) VALUES (?, ?, ?, ?, ?, ?)",
              ("wechat", "wx_app_1", "tok-1", 2000.5, 1000.25, 0))
    store.raw("INSERT INTO client (name, key_hash, scopes, created_at) VALUES (?, ?, ?, ?)",
              ("ci", "a" * 64, "token:read", 12.5))
    assert store.db.init_schema() == []
    assert migrations.current(store.db) == migrations.head()
    assert store.raw("SELECT platform, appid, secret FROM platform") == [("wechat", "wx_app_1", "fernet:stored")]
    assert store.raw("SELECT value, expires_at, fetched_at, final FROM token") == [("tok-1", 2000.5, 1000.25, 0)]
    assert store.raw("SELECT name, key_hash, scopes FROM client") == [("ci", "a" * 64, "token:read")]
    assert set(store.schema()) == TABLES
    assert store.schema() == _empty(store, tmp_path)


def test_a_database_whose_grant_table_the_grant_store_made_is_adopted(store: Store, tmp_path: Path) -> None:
    _today_db_init(store)
    dialect = store.db.dialect
    store.raw(f"""CREATE TABLE alipay_grant (app_id {GRANTS.TEXT_KEY[dialect]} NOT NULL,
        auth_app_id {GRANTS.TEXT_KEY[dialect]} NOT NULL, app_auth_token TEXT NOT NULL,
        app_refresh_token TEXT NOT NULL, expires_at {GRANTS.REAL[dialect]} NOT NULL,
        refresh_expires_at {GRANTS.REAL[dialect]} NULL, user_id {GRANTS.TEXT_KEY[dialect]} NULL,
        updated_at {GRANTS.REAL[dialect]} NOT NULL, PRIMARY KEY (app_id, auth_app_id))""")
    store.raw("INSERT INTO alipay_grant VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              ("isv", "merchant", "tok", "refresh", 10.0, None, None, 1.0))
    assert store.db.init_schema() == []
    assert store.raw("SELECT app_id, auth_app_id, app_auth_token, app_refresh_token FROM alipay_grant") == [
        ("isv", "merchant", "tok", "refresh")]
    assert store.schema() == _empty(store, tmp_path)


def test_the_original_services_platform_table_is_adopted_with_its_rows(store: Store, tmp_path: Path) -> None:
    store.raw(ORIGINAL_PLATFORM_TABLE[store.db.dialect])
    for row in ORIGINAL_ROWS:
        store.raw("INSERT INTO platform (platform, appid, secret) VALUES (?, ?, ?)", row)
    before = store.raw("SELECT id, platform, appid, secret FROM platform ORDER BY id")
    out = store.cli("db", "upgrade")
    assert "platform.created_at" in out and "platform.updated_at" in out and "platform.uq_platform_appid" in out
    assert store.raw("SELECT id, platform, appid, secret FROM platform ORDER BY id") == before
    assert [r[1:] for r in before] == ORIGINAL_ROWS
    assert store.schema() == _empty(store, tmp_path)
    # The unique key now guards (platform, appid).
    with pytest.raises(sa.exc.IntegrityError):
        store.raw("INSERT INTO platform (platform, appid, secret) VALUES (?, ?, ?)", ORIGINAL_ROWS[0])
    assert "added" not in store.cli("db", "upgrade")


def test_identifiers_compare_exactly_after_upgrade_on_every_dialect(store: Store) -> None:
    # The original service's table and a 0002 database: MySQL's default
    # collation matched appids whatever their case.
    store.raw(ORIGINAL_PLATFORM_TABLE[store.db.dialect])
    store.raw("INSERT INTO platform (platform, appid, secret) VALUES (?, ?, ?)", ("wechat", "wxgood3", "s-1"))
    migrations.upgrade(store.db, "0002")
    if store.kind == "mysql":
        assert store.raw("SELECT appid FROM platform WHERE appid = ?", ("WXGOOD3",)) == [("wxgood3",)]
    store.cli("db", "upgrade")
    assert store.raw("SELECT appid FROM platform WHERE appid = ?", ("WXGOOD3",)) == []
    assert store.raw("SELECT appid FROM platform WHERE appid = ?", ("wxgood3",)) == [("wxgood3",)]
    # A case variant is another credential now, not a duplicate.
    store.raw("INSERT INTO platform (platform, appid, secret) VALUES (?, ?, ?)", ("wechat", "WXGOOD3", "s-2"))
    assert sorted(store.raw("SELECT appid, secret FROM platform")) == [("WXGOOD3", "s-2"), ("wxgood3", "s-1")]
    if store.kind == "mysql":
        collations = store.raw(
            "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "DATABASE() AND COLUMN_NAME IN ('platform', 'appid', 'name', 'key_hash', 'client', 'app_id', "
            "'auth_app_id', 'user_id') AND TABLE_NAME != ?", (migrations.VERSION_TABLE,))
        # 16 from revision 0003, and the third-party tables' platform and appid (0004).
        assert len(collations) == 19 and all(c.endswith("_bin") for _, _, c in collations), collations


def _empty(store: Store, tmp_path: Path) -> dict[str, Any]:
    """The schema an empty database of this dialect reaches (made here, in a
    database of its own)."""
    if store.kind == "sqlite":
        other = Database(sqlite_path=str(tmp_path / "empty.sqlite3"))
    elif store.kind == "mysql":
        other = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                                           database=str(store.db.url.database) + "_e"))
    else:
        other = Database(url=postgres_url(str(store.db.url.database) + "_e"))
    try:
        other.init_schema()
        return Store(store.kind, other, {}).schema()
    finally:
        other.close()
        _drop(store.kind, str(other.url.database))


def _drop(kind: str, name: str) -> None:
    if kind == "mysql":
        engine = sa.create_engine(f"mysql+pymysql://{MYSQL['user']}@{MYSQL['host']}:{MYSQL['port']}/",
                                  poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        ddl = f"DROP DATABASE IF EXISTS `{name}`"
    elif kind == "postgres":
        engine = sa.create_engine(postgres_url("postgres").replace("postgresql://", "postgresql+psycopg://"),
                                  poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        ddl = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        return
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(ddl)
    finally:
        engine.dispose()
