"""The token-change followers against real Redis, SQLite and MariaDB: a
write made through one worker's adapters drops the token it replaced from
another worker's memory, and a lost connection empties that memory once it
is back."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pighand_token.adapters import redis as redis_adapters
from pighand_token.adapters.memory import MemoryTokenStore
from pighand_token.adapters.sql import Database, MySQLParams, SqlTokenChanges, SqlTokenStore
from pighand_token.core.domain import Token, TokenKey
from tests.conftest import MYSQL, REDIS, free_port, postgres_url
from tests.integration.test_redis_connections import wait_ping

KEY = TokenKey("wechat", "wx_app_1")
OTHER = TokenKey("wecom", "ww0123456789abcdef:1000002")  # an appid with a colon


def token(value: str, fetched_at: float) -> Token:
    return Token(value=value, expires_at=fetched_at + 7200, fetched_at=fetched_at)


def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> float:
    """Seconds until ``condition`` held (fails after ``timeout_s``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
    return time.monotonic() - started


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def follower_log() -> Iterator[Records]:
    """What the followers log (the app's logger may not propagate to the
    root, where caplog listens)."""
    logger = logging.getLogger("pighand_token.adapters.follower")
    level = logger.level
    records = Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


def logged(records: Records, text: str) -> list[str]:
    return [m for m in records.messages if text in m]


class Worker:
    """One worker's tiers and follower, as bootstrap wires them."""

    def __init__(self, store: Any, follower_of: Callable[[MemoryTokenStore], Any]) -> None:
        self.memory = MemoryTokenStore(time.time, ttl_s=60)
        self.store = store
        self.follower = follower_of(self.memory)

    def read(self, key: TokenKey) -> Token | None:
        """What the service's lookup does: memory, else the shared tier,
        back-filling memory."""
        found = self.memory.get(key)
        if found is None:
            found = self.store.get(key)
            if found is not None:
                self.memory.put(key, found)
        return found


# -- Redis -------------------------------------------------------------------
def redis_worker(client: redis.Redis, prefix: str) -> Worker:
    store = redis_adapters.RedisTokenStore(client, clock=time.time, margin_s=300, key_prefix=prefix)
    return Worker(store, lambda memory: redis_adapters.RedisTokenChanges(client, memory, key_prefix=prefix))


@pytest.fixture
def redis_workers(redis_prefix: str) -> Iterator[list[Worker]]:
    workers = []
    for _ in range(2):
        client = redis_adapters.connect(host=REDIS["host"], port=REDIS["port"])
        workers.append(redis_worker(client, redis_prefix))
    for w in workers:
        w.follower.start()
    try:
        channel = redis_adapters.changes_channel(redis_prefix)
        probe = redis.Redis(**REDIS)
        eventually(lambda: probe.pubsub_numsub(channel)[0][1] == 2)  # both subscribed
        probe.close()
        yield workers
    finally:
        for w in workers:
            w.follower.stop()


def test_a_redis_write_drops_the_replaced_token_from_the_other_workers_memory(redis_workers: list[Worker]) -> None:
    writer, reader = redis_workers
    now = time.time()
    writer.store.put(KEY, token("old", now - 10))
    writer.store.put(OTHER, token("other", now - 10))
    assert reader.read(KEY) == token("old", now - 10)
    assert reader.read(OTHER) is not None
    writer.store.put(KEY, token("new", now))
    seconds = eventually(lambda: reader.memory.get(KEY) is None, 0.1)
    assert seconds < 0.1
    assert reader.memory.get(OTHER) is not None  # only the token written
    assert reader.read(KEY) == token("new", now)


def test_a_read_in_flight_cannot_put_the_replaced_token_back(redis_workers: list[Worker]) -> None:
    writer, reader = redis_workers
    now = time.time()
    writer.store.put(KEY, token("old", now - 10))
    in_flight = reader.store.get(KEY)  # read from Redis just before the write
    writer.store.put(KEY, token("new", now))
    # Fetched between the two: refused once the second write is announced.
    eventually(lambda: reader.memory.put(KEY, token("probe", now - 5)) is False)
    assert in_flight is not None and reader.memory.put(KEY, in_flight) is False
    assert reader.read(KEY) == token("new", now)


def test_the_announcement_names_the_token_never_its_value_and_only_real_writes_are_announced(
        redis_workers: list[Worker], redis_client: redis.Redis, redis_prefix: str) -> None:
    writer, _ = redis_workers
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(redis_adapters.changes_channel(redis_prefix))
    time.sleep(0.05)
    now = time.time()

    def announced() -> list[dict[str, Any]]:
        seen = []
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.05)
            if message is not None:
                seen.append(json.loads(message["data"]))
        return seen

    try:
        assert writer.store.put(OTHER, token("secret-token-value", now))
        assert announced() == [{"platform": "wecom", "appid": OTHER.appid, "deleted": False, "fetched_at": now}]
        assert not writer.store.put(OTHER, token("earlier", now - 1))  # refused: Redis holds a later one
        assert announced() == []
        writer.store.delete(OTHER)
        assert announced() == [{"platform": "wecom", "appid": OTHER.appid, "deleted": True, "fetched_at": now}]
        writer.store.delete(OTHER)  # nothing there: nothing to announce
        assert announced() == []
    finally:
        pubsub.close()


def test_a_redis_delete_drops_the_token_and_keeps_it_out(redis_workers: list[Worker]) -> None:
    writer, reader = redis_workers
    now = time.time()
    writer.store.put(KEY, token("gone", now))
    assert reader.read(KEY) is not None
    writer.store.delete(KEY)
    eventually(lambda: reader.memory.get(KEY) is None)
    assert reader.memory.put(KEY, token("gone", now)) is False
    assert reader.memory.put(KEY, token("fetched later", now + 1)) is True


def test_a_malformed_announcement_is_ignored(redis_workers: list[Worker], redis_client: redis.Redis,
                                             redis_prefix: str) -> None:
    writer, reader = redis_workers
    now = time.time()
    writer.store.put(KEY, token("old", now - 10))
    reader.read(KEY)
    redis_client.publish(redis_adapters.changes_channel(redis_prefix), "not json")
    redis_client.publish(redis_adapters.changes_channel(redis_prefix), '{"platform": "wechat"}')
    writer.store.put(KEY, token("new", now))
    eventually(lambda: reader.memory.get(KEY) is None)
    assert reader.follower.running


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp_path)]
    state: dict[str, Any] = {"port": port, "proc": subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                                                    stderr=subprocess.DEVNULL)}

    def restart() -> None:
        state["proc"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ping(redis.Redis(port=port))

    state["restart"] = restart
    wait_ping(redis.Redis(port=port))
    try:
        yield state
    finally:
        state["proc"].kill()
        state["proc"].wait(timeout=10)


def test_after_redis_comes_back_the_follower_resubscribes_and_empties_memory(
        private_redis: dict[str, Any], follower_log: Records) -> None:
    worker = redis_worker(redis_adapters.connect(host="127.0.0.1", port=private_redis["port"]), "")
    worker.follower.start()
    try:
        time.sleep(0.1)
        worker.memory.put(KEY, token("held", time.time()))
        private_redis["proc"].kill()
        private_redis["proc"].wait(timeout=10)
        time.sleep(2.5)  # several reconnect attempts
        assert worker.memory.get(KEY) is not None  # while Redis is away, memory goes on serving
        lost = logged(follower_log, "redis token changes lost")
        assert len(lost) == 1 and "Connection refused" in lost[0]  # once per outage
        private_redis["restart"]()
        # Announcements made meanwhile are lost: everything held goes.
        assert eventually(lambda: worker.memory.get(KEY) is None, 3.0) < 3.0
        eventually(lambda: len(logged(follower_log, "following again")) == 1)
        # Only the subscription dropped (Redis keeps running): emptied too.
        worker.memory.put(KEY, token("held again", time.time()))
        redis.Redis(port=private_redis["port"]).client_kill_filter(_type="pubsub")
        eventually(lambda: worker.memory.get(KEY) is None)
        assert worker.follower.running
    finally:
        worker.follower.stop()
    assert not worker.follower.running


def test_a_follower_started_while_redis_is_down_waits_for_it(follower_log: Records) -> None:
    worker = redis_worker(redis_adapters.connect(host="127.0.0.1", port=free_port(), timeout_s=0.2), "")
    worker.follower.start()
    time.sleep(0.5)
    assert worker.follower.running
    worker.follower.stop()
    assert len(logged(follower_log, "redis token changes lost")) == 1


# -- SQL ---------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "mysql", "postgres"])
def open_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """open_db() -> a Database on this test's store (each its own connections,
    like another worker's)."""
    opened: list[Database] = []

    def open_one() -> Database:
        if request.param == "mysql":
            db = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                                            database=request.getfixturevalue("mysql_db")))
        elif request.param == "postgres":
            db = Database(url=postgres_url(request.getfixturevalue("pg_db")))
        else:
            db = Database(sqlite_path=str(tmp_path / "pighand.sqlite3"))
        opened.append(db)
        return db

    yield open_one
    for db in opened:
        db.close()


def sql_worker(db: Database, clock: Callable[[], float] = time.time, **options: Any) -> Worker:
    store = SqlTokenStore(db)
    return Worker(store, lambda memory: SqlTokenChanges(store, memory, clock=clock, **options))


def test_a_sql_write_drops_the_replaced_token_from_the_other_workers_memory_within_a_poll(
        open_db: Callable[[], Database]) -> None:
    writer, reader = sql_worker(open_db()), sql_worker(open_db(), interval_s=0.25)
    now = time.time()
    writer.store.put(KEY, token("old", now - 10))
    writer.store.put(OTHER, token("other", now - 10))
    assert reader.read(KEY) is not None and reader.read(OTHER) is not None
    reader.follower.start()
    try:
        time.sleep(0.3)  # the first poll has read every row
        assert reader.memory.get(KEY) is not None
        writer.store.put(KEY, token("new", now))
        assert eventually(lambda: reader.memory.get(KEY) is None, 1.0) < 0.5
        assert reader.memory.get(OTHER) is not None
        assert reader.memory.put(KEY, token("old", now - 10)) is False  # a read in flight
        assert reader.read(KEY) == token("new", now)
    finally:
        reader.follower.stop()


def test_a_write_from_an_instance_whose_clock_is_behind_is_still_seen(open_db: Callable[[], Database]) -> None:
    writer, reader = sql_worker(open_db()), sql_worker(open_db(), window_s=41)
    now = time.time()
    writer.store.put(OTHER, token("newest seen", now))
    reader.follower.poll()  # follower.poll() is what the thread runs every interval
    # Another instance, 40 s behind, replaces a token.
    writer.store.put(KEY, token("old", now - 60))
    reader.read(KEY)
    writer.store.put(KEY, token("new", now - 40))
    reader.follower.poll()
    assert reader.memory.get(KEY) is None


def test_a_follower_whose_own_clock_is_ahead_still_sees_writes(open_db: Callable[[], Database]) -> None:
    writer = sql_worker(open_db())
    reader = sql_worker(open_db(), clock=lambda: time.time() + 3600, window_s=41)
    now = time.time()
    writer.store.put(OTHER, token("other", now - 5))
    reader.follower.poll()
    writer.store.put(KEY, token("old", now - 10))
    reader.read(KEY)
    writer.store.put(KEY, token("new", now))
    reader.follower.poll()
    assert reader.memory.get(KEY) is None


def test_the_sql_follower_survives_an_unreachable_database(follower_log: Records) -> None:
    db = Database(mysql=MySQLParams(host="127.0.0.1", port=free_port(), user="root", connect_timeout=0.2))
    worker = sql_worker(db, interval_s=0.05)
    worker.follower.start()
    time.sleep(1.0)
    assert worker.follower.running
    worker.follower.stop()
    assert len(logged(follower_log, "sql token changes lost")) == 1


def test_the_poll_reads_recent_tokens_through_the_fetched_at_index(open_db: Callable[[], Database]) -> None:
    db = open_db()
    store = SqlTokenStore(db)
    now = time.time()
    for i in range(1200):
        store.put(TokenKey("wechat", f"wx{i:05d}"), token("v", now - 7200 + i))
    if db.dialect == "sqlite":
        plan, _ = db.execute("EXPLAIN QUERY PLAN SELECT platform, appid, fetched_at FROM token WHERE fetched_at > ?",
                             (now - 60,))
        assert any("ix_token_fetched_at" in str(row) for row in plan), plan
    else:
        if db.dialect == "postgresql":
            db.execute("ANALYZE token")  # the planner's statistics, as autovacuum would gather them
        plan, _ = db.execute("EXPLAIN SELECT platform, appid, fetched_at FROM token WHERE fetched_at > ?",
                             (now - 60,))
        assert any("ix_token_fetched_at" in str(row) for row in plan), plan
    assert len(store.fetched_since(now - 7200 + 1190)) == 9


def test_an_earlier_token_table_gets_the_index_once(mysql_db: str) -> None:
    import pymysql
    conn = pymysql.connect(**MYSQL, database=mysql_db, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE token (platform VARCHAR(32) NOT NULL, appid VARCHAR(128) NOT NULL, "
                    "value TEXT NOT NULL, expires_at DOUBLE NOT NULL, fetched_at DOUBLE NOT NULL, "
                    "final TINYINT NOT NULL DEFAULT 0, PRIMARY KEY (platform, appid))")
    conn.close()
    db = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"], database=mysql_db))
    assert "token.ix_token_fetched_at" in db.init_schema()
    db.close()
    again = Database(mysql=MySQLParams(host=MYSQL["host"], port=MYSQL["port"], user=MYSQL["user"],
                                       database=mysql_db))
    assert again.init_schema() == []
    again.close()
