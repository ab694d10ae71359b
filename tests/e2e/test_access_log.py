"""The access log of the shipped server: one JSON line per request, on the
hot path and through Flask, at log_level info."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import Server
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"


def access_lines(server: Server) -> list[dict[str, object]]:
    found = []
    for line in server.log().splitlines():
        if line.startswith("{") and '"pighand_token.access"' in line:
            found.append(json.loads(line))
    return found


@pytest.mark.parametrize("level,logged", [("info", True), ("warning", False)])
def test_every_request_leaves_one_access_line_at_info(tmp_path: Path, wechat: FakeWeChat,
                                                      request: pytest.FixtureRequest, level: str,
                                                      logged: bool) -> None:
    settings = storage("sqlite", tmp_path, request)
    seed(settings, (APP, "s3cr3t-wx-1"))
    with Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, is_enable_schedule=False, log_level=level,
                **settings) as server:
        url = f"{server.base_url}/token/wechat/{APP}"
        with requests.Session() as session:
            ids = []
            for n in range(5):  # the first from the platform, then the hot path
                answer = session.get(url, headers={"X-Request-Id": f"req-{n}"}, timeout=10)
                assert answer.status_code == 200
                ids.append(answer.headers["X-Request-Id"])
            assert session.get(f"{server.base_url}/token/wechat/wx_missing", timeout=10).status_code == 404
        deadline = time.monotonic() + 5
        while logged and len([x for x in access_lines(server) if x["route"] != "/healthz"]) < 6 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        lines = [x for x in access_lines(server) if x["route"] != "/healthz"]
    if not logged:
        assert lines == []
        return
    assert [x["request_id"] for x in lines[:5]] == ids == [f"req-{n}" for n in range(5)]
    assert [x["status"] for x in lines] == [200] * 5 + [404]
    assert lines[0]["tier"] == "platform" and {x["tier"] for x in lines[1:5]} == {"memory"}
    assert all(x["route"] == "/token/<platform>/<appid>" and x["platform"] == "wechat" for x in lines)
    assert lines[5]["appid"] == "wx_missing"
    assert "s3cr3t-wx-1" not in server.log()
