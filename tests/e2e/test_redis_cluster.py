"""The shipped server on a real Redis Cluster (3 masters, 3 replicas, on
loopback): one platform call per token across instances and workers, a PUT
served everywhere at once, and a master killed under load."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from tests.conftest import RedisClusterProcs, Server
from tests.e2e.test_coherence import COMMON, FRESH_GETS, fresh_gets, put_then_get_rounds
from tests.e2e.test_workers import envelope, seed
from tests.fakes.wechat import FakeWeChat

STABLE = "/cgi-bin/stable_token"
APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"
PATH = f"/token/wechat/{APP}"


def cluster_settings(cluster: RedisClusterProcs, tmp_path: Path) -> dict[str, Any]:
    return {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_cluster_nodes": cluster.nodes,
            "redis_key_prefix": f"t{uuid.uuid4().hex[:10]}:"}


def test_200_cold_gets_over_two_instances_on_a_cluster_make_one_call(
        tmp_path: Path, wechat: FakeWeChat, redis_cluster: RedisClusterProcs) -> None:
    settings = cluster_settings(redis_cluster, tmp_path)
    seed(settings, (APP, SECRET))
    wechat.delay(0.3)
    with ExitStack() as stack:
        urls = [stack.enter_context(Server(tmp_path, workers=2, wechat_api_base=wechat.base_url,
                                           is_enable_schedule=False, **settings)).base_url for _ in range(2)]
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda i: requests.get(urls[i % 2] + PATH, timeout=60), range(200)))
        assert [a.status_code for a in answers] == [200] * 200
        tokens = {envelope(a)["data"] for a in answers}
        assert len(tokens) == 1
        assert wechat.count(STABLE) == 1
        # Hash, lock and raw key as a cluster holds them.
        client = redis_cluster.cluster_client()
        prefix = settings["redis_key_prefix"]
        assert client.hget(f"{prefix}pighand:token:{{wechat:{APP}}}", "value") == tokens.pop()
        assert client.get(f"{prefix}wechat_{APP}") == client.hget(f"{prefix}pighand:token:{{wechat:{APP}}}", "value")


def test_put_on_one_instance_is_served_by_every_worker_within_100_ms_on_a_cluster(
        tmp_path: Path, wechat: FakeWeChat, redis_cluster: RedisClusterProcs) -> None:
    settings = cluster_settings(redis_cluster, tmp_path)
    seed(settings, (APP, SECRET))
    with ExitStack() as stack, ThreadPoolExecutor(2 * FRESH_GETS) as pool:
        servers = [stack.enter_context(Server(tmp_path, workers=2, wechat_api_base=wechat.base_url,
                                              log_level="warning", **COMMON, **settings)) for _ in range(2)]
        urls = [s.base_url for s in servers]
        current = envelope(requests.get(urls[0] + PATH, timeout=10))["data"]
        fresh_gets(pool, urls, FRESH_GETS)
        old_served, workers = put_then_get_rounds(pool, urls, current, 60)
        assert old_served == 0
        assert all(len(seen) == 2 for seen in workers.values()), workers
        assert wechat.count("/cgi-bin/token") == 61


def test_master_killed_under_load_serves_every_request_and_keeps_the_token(
        tmp_path: Path, wechat: FakeWeChat) -> None:
    # A cluster of this test's own: it loses a master.
    cluster = RedisClusterProcs(tmp_path / "cluster")
    try:
        cluster.start()
        settings = cluster_settings(cluster, tmp_path)
        seed(settings, (APP, SECRET))
        with ExitStack() as stack:
            servers = [stack.enter_context(Server(tmp_path, workers=2, wechat_api_base=wechat.base_url,
                                                  is_enable_schedule=False, local_cache_ttl=5, **settings))
                       for _ in range(2)]
            urls = [s.base_url for s in servers]
            token = envelope(requests.get(urls[0] + PATH, timeout=10))["data"]
            client = cluster.cluster_client()
            meta = f"{settings['redis_key_prefix']}pighand:token:{{wechat:{APP}}}"
            master = client.get_node_from_key(meta)
            assert master is not None
            # The write has reached the slot's replica before its master dies.
            client.get_redis_connection(master).execute_command("WAIT", 1, 2000)

            answers: Counter[tuple[int, str | None]] = Counter()
            stop = threading.Event()

            def load(i: int) -> None:
                session = requests.Session()
                while not stop.is_set():
                    answer = session.get(urls[i % 2] + PATH, timeout=30)
                    answers[(answer.status_code, answer.json().get("data"))] += 1
                    time.sleep(0.02)

            with ThreadPoolExecutor(8) as pool:
                running = [pool.submit(load, i) for i in range(8)]
                time.sleep(2)
                cluster.kill(master.port)
                time.sleep(10)  # the replica takes over (node timeout 2 s), and memory (5 s) runs out
                stop.set()
                for future in running:
                    future.result()
            served = sum(answers.values())
            assert served > 1000, answers  # a few hundred GETs a second
            assert {status for status, _ in answers} == {200}, (answers, servers[0].log()[-3000:])
            # Every answer the same, valid token: the promoted replica held it
            # (stable mode would hand back the same token anyway, so the
            # platform calls are the stricter check).
            assert {data for _, data in answers} == {token}
            assert wechat.is_valid(token)
            fresh = cluster.cluster_client()
            assert fresh.hget(meta, "value") == token
            assert fresh.get(f"{settings['redis_key_prefix']}wechat_{APP}") == token
            # The key was not lost, so it was not fetched again because of a
            # loss. One more call is allowed, and no more: a worker whose memory
            # ran out (or was emptied when its subscription's node died) while
            # the slot had no master skips Redis and finds no token in SQL
            # (save_model auto writes SQL only while Redis is down), and
            # fetches once under the SQL lock; WeChat's stable mode hands back
            # the same token, as the answers above show.
            assert wechat.count(STABLE) <= 2
    finally:
        cluster.stop()
