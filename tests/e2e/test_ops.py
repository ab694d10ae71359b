"""Health, readiness, metrics across gunicorn workers, and JSON logs."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from pighand_token.app import create_app
from tests.conftest import Server, app_overrides, clean_env, run_cli
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"


def sample(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_health_metrics_and_logs_under_three_workers(tmp_path: Path, wechat: FakeWeChat,
                                                     request: pytest.FixtureRequest) -> None:
    settings = storage("redis+sqlite", tmp_path, request)
    seed(settings, (APP, SECRET))
    env = clean_env(**settings)
    key = run_cli("client", "add", "billing", "--all-apps", env=env).stdout.strip()
    prom = run_cli("client", "add", "prometheus", "--app", "metrics", env=env).stdout.strip()
    with Server(tmp_path, workers=3, wechat_api_base=wechat.base_url, is_enable_schedule=True,
                  auth_required=True, log_level="info", **settings) as server:
        base = server.base_url
        assert requests.get(f"{base}/healthz", timeout=10).json() == {"code": 200, "data": "ok", "error": ""}
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        headers = {"X-Api-Key": key}
        tokens = set()
        for i in range(30):
            answer = requests.get(f"{base}/token/wechat/{APP}", headers={**headers, "X-Request-Id": f"r-{i}"},
                                  timeout=10)
            assert answer.status_code == 200 and answer.headers["X-Request-Id"] == f"r-{i}"
            tokens.add(answer.json()["data"])
        assert requests.get(f"{base}/token/wechat/nope", headers=headers, timeout=10).status_code == 404
        # /metrics lists every app: no key is 401, an app key 403, the metrics key reads it.
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
        refused = requests.get(f"{base}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 403 and "metrics scope" in refused.json()["error"]
        assert "pighand_" not in refused.text
        # Every worker answers scrapes with the sum over all workers.
        scrapes = [requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {prom}"}, timeout=10).text
                   for _ in range(6)]
        assert requests.get(f"{base}/token/wechat/{APP}", headers={"X-Api-Key": prom}, timeout=10).status_code == 403
        log = server.log()
    for metrics in scrapes:
        assert sample(metrics, "pighand_http_requests_total", route="/token/<platform>/<appid>", method="GET",
                      status="200") == 30
        assert sample(metrics, "pighand_http_requests_total", status="404") >= 1
        assert sample(metrics, "pighand_http_requests_total", route="/metrics", status="401") == 1
        assert sample(metrics, "pighand_platform_calls_total", platform="wechat", outcome="ok") == 1
        assert sample(metrics, "pighand_token_lookups_total", tier="platform") == 1
        assert sample(metrics, "pighand_token_lookups_total", tier="redis") + sample(
            metrics, "pighand_token_lookups_total", tier="memory") == 30
        assert sample(metrics, "pighand_scheduler_ticks_total", outcome="ran") == 1
        assert 7000 < sample(metrics, "pighand_token_expires_in_seconds", platform="wechat", appid=APP) <= 7200
        assert sample(metrics, "pighand_refresh_seconds_count", platform="wechat") == 1
        for secret in (SECRET, key, prom, *tokens):
            assert secret not in metrics
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests_logged = [e for e in lines if e.get("kind") == "request" and e.get("route", "").startswith("/token")]
    first = next(e for e in requests_logged if e["request_id"] == "r-0")
    assert first["client"] == "billing" and first["platform"] == "wechat" and first["appid"] == APP
    assert first["status"] == 200 and first["tier"] in ("redis", "memory") and first["duration_ms"] >= 0
    calls = [e for e in lines if e.get("kind") == "platform_call"]
    assert len(calls) == 1 and calls[0]["outcome"] == "ok" and calls[0]["appid"] == APP
    for secret in (SECRET, key, *tokens):
        assert secret not in log


def test_readyz_names_the_store_that_fails(tmp_path: Path, wechat: FakeWeChat) -> None:
    app = create_app(overrides={"sqlite_path": str(tmp_path / "p.sqlite3"), "redis_host": "127.0.0.1",
                                "redis_port": 9, **app_overrides(wechat, auth_required=True)})
    client = app.test_client()
    answer = client.get("/readyz")
    assert answer.status_code == 503 and answer.get_json()["data"] is None
    assert "redis" in answer.get_json()["error"] and "sqlite" not in answer.get_json()["error"]
    assert client.get("/healthz").status_code == 200  # alive all the same, and no key needed
    broken_sql = create_app(overrides={"mysql_host": "127.0.0.1", "mysql_port": 9,
                                       "sqlite_path": str(tmp_path / "q.sqlite3"), **app_overrides(wechat)})
    answer = broken_sql.test_client().get("/readyz")
    assert answer.status_code == 503 and "mysql" in answer.get_json()["error"]


def test_metrics_count_platform_errors_by_errcode(make_app: Any, wechat: FakeWeChat) -> None:
    from pighand_token.adapters.prometheus import REGISTRY
    app = make_app()
    from pighand_token.core.domain import Credential
    app.extensions["pighand"].credentials.add(Credential("wechat", APP, "wrong-secret"))
    before = REGISTRY.get_sample_value("pighand_platform_calls_total",
                                       {"platform": "wechat", "outcome": "error", "errcode": "40125"}) or 0
    assert app.test_client().get(f"/token/wechat/{APP}").status_code == 502
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert sample(text, "pighand_platform_calls_total", errcode="40125") == before + 1
    assert sample(text, "pighand_token_state", appid=APP, state="failing") == 1


def test_invented_methods_add_no_label_sets_to_the_metrics(tmp_path: Path, wechat: FakeWeChat) -> None:
    # Each request names a method of its own, and no key is needed to send it.
    with Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                sqlite_path=str(tmp_path / "pighand.sqlite3")) as server:
        before = requests.get(f"{server.base_url}/metrics", timeout=10).text
        statuses = set()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            reader = sock.makefile("rb")
            for i in range(300):
                sock.sendall(f"M{i:07d} /x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                status_line = reader.readline()
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                reader.read(length)
                statuses.add(status_line.split()[1])
        after = requests.get(f"{server.base_url}/metrics", timeout=10).text
    assert statuses == {b"404"}, statuses  # no route has such a method
    assert "M0000001" not in after and "M0000299" not in after
    assert sample(after, "pighand_http_requests_total", method="OTHER") == 300
    label_sets = [line for line in after.splitlines() if line.startswith("pighand_http_requests_total{")]
    assert len(label_sets) <= len([line for line in before.splitlines()
                                   if line.startswith("pighand_http_requests_total{")]) + 2
