"""WeChat jsapi / wx_card tickets made with the managed token."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.fakes.wechat import STABLE_PATH, TICKET_PATH, FakeWeChat
from tests.integration.test_api import APP, body, seed

# Every test here runs on the hot path and on Flask alone in process, and
# over HTTP against the shipped server (conftest.serving_path).
pytestmark = pytest.mark.usefixtures("serving_path")


@pytest.mark.parametrize("kind", ["sqlite", "redis+mysql"])
def test_ticket_is_fetched_once_and_cached(make_app: Any, wechat: FakeWeChat, kind: str) -> None:
    app = make_app(kind)
    seed(app)
    client = app.test_client()
    first = client.get(f"/ticket/wechat/{APP}/jsapi")
    assert first.status_code == 200
    ticket = body(first)["data"]
    assert ticket == wechat.last(TICKET_PATH)["ticket"]
    assert [body(client.get(f"/ticket/wechat/{APP}/jsapi"))["data"] for _ in range(3)] == [ticket] * 3
    # A second worker on the same stores needs no call either.
    assert body(make_app(kind).test_client().get(f"/ticket/wechat/{APP}/jsapi"))["data"] == ticket
    assert wechat.count(TICKET_PATH) == 1 and wechat.count(STABLE_PATH) == 1


def test_card_ticket_is_cached_apart_from_jsapi(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    jsapi = body(client.get(f"/ticket/wechat/{APP}/jsapi"))["data"]
    card = body(client.get(f"/ticket/wechat/{APP}/wx_card"))["data"]
    assert jsapi != card
    assert [c["type"] for c in wechat.find(TICKET_PATH)] == ["jsapi", "wx_card"]


def test_ticket_margin_refetches_before_expiry(make_app: Any, wechat: FakeWeChat) -> None:
    wechat.ticket_expires_in = 2  # margin min(300, 1) = 1 s
    app = make_app()
    seed(app)
    client = app.test_client()
    body(client.get(f"/ticket/wechat/{APP}/jsapi"))
    time.sleep(1.1)
    assert client.get(f"/ticket/wechat/{APP}/jsapi").status_code == 200
    assert wechat.count(TICKET_PATH) == 2


def test_rejected_token_is_refreshed_once_and_ticket_retried(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    old = body(client.get(f"/token/wechat/{APP}"))["data"]
    wechat.invalidate(old)  # e.g. another system fetched a token behind our back
    answer = client.get(f"/ticket/wechat/{APP}/jsapi")
    assert answer.status_code == 200, body(answer)
    new = body(client.get(f"/token/wechat/{APP}"))["data"]
    assert new != old and wechat.is_valid(new)
    tickets = wechat.find(TICKET_PATH)
    assert [c["errcode"] for c in tickets] == [40001, 0]
    # Normal mode handed back the rejected token, so exactly one forced refresh.
    assert [c["force_refresh"] for c in wechat.find(STABLE_PATH)] == [False, False, True]


def test_unknown_ticket_type_is_404_listing_types(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    answer = app.test_client().get(f"/ticket/wechat/{APP}/nope")
    assert answer.status_code == 404
    assert "jsapi" in body(answer)["error"] and "wx_card" in body(answer)["error"]
    assert wechat.count() == 0


def test_ticket_for_unknown_app_is_404_without_calls(make_app: Any, wechat: FakeWeChat) -> None:
    answer = make_app().test_client().get("/ticket/wechat/wx_missing/jsapi")
    assert answer.status_code == 404 and wechat.count() == 0


def test_ticket_failure_is_502_with_errcode_and_cooldown(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    body(client.get(f"/token/wechat/{APP}"))
    wechat.fail_with_errcode_next(1, 45009, "reach max api daily quota limit", path=TICKET_PATH)
    answer = client.get(f"/ticket/wechat/{APP}/jsapi")
    assert answer.status_code == 502 and "45009" in body(answer)["error"]
    again = client.get(f"/ticket/wechat/{APP}/jsapi")
    assert again.status_code == 502 and int(again.headers["Retry-After"]) > 200
    assert wechat.count(TICKET_PATH) == 1
    # The token itself is unaffected.
    assert client.get(f"/token/wechat/{APP}").status_code == 200
