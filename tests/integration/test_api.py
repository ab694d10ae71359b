"""The HTTP API on real stores (SQLite, MariaDB, Redis) against the fake
WeChat served over HTTP."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from pighand_token.app import create_app
from tests.conftest import STORAGE_KINDS, app_overrides, mysql_rows, storage_overrides
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"
STABLE = "/cgi-bin/stable_token"
CLASSIC = "/cgi-bin/token"


# Every test here runs on the hot path and on Flask alone in process, and
# over HTTP against the shipped server (conftest.serving_path).
pytestmark = pytest.mark.usefixtures("serving_path")


def seed(app: Any, appid: str = APP, secret: str = SECRET) -> None:
    from pighand_token.core.domain import Credential
    app.extensions["pighand"].credentials.add(Credential("wechat", appid, secret))


def body(response: Any) -> dict[str, Any]:
    data = response.get_json()
    assert data["code"] == response.status_code
    if data["code"] == 200:
        # The token, and the whole seconds it will still be served: the caller's cache lifetime.
        assert list(data) == ["code", "data", "error", "expires_in"]
        assert isinstance(data["expires_in"], int) and data["expires_in"] >= 0
        assert response.headers["Cache-Control"] == f"private, max-age={data['expires_in']}"
    else:
        assert list(data) == ["code", "data", "error"]
        assert response.headers["Cache-Control"] == "no-store"
    return dict(data)


def opened(app: Any, stored: str) -> str:
    """A value as stored in SQL, decrypted with the app's key."""
    assert stored.startswith("fernet:")
    return str(app.extensions["pighand"].cipher.decrypt(stored))


def no_secret(response: Any) -> None:
    assert SECRET not in response.get_data(as_text=True)


@pytest.fixture(params=STORAGE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_get_returns_envelope_and_calls_platform_once(make_app: Any, wechat: FakeWeChat, kind: str) -> None:
    app = make_app(kind)
    seed(app)
    client = app.test_client()
    first = client.get(f"/token/wechat/{APP}")
    assert first.status_code == 200
    data = body(first)
    assert data["error"] == "" and wechat.is_valid(data["data"])
    for _ in range(5):
        assert body(client.get(f"/token/wechat/{APP}"))["data"] == data["data"]
    assert wechat.count(STABLE) == 1


def test_tokens_survive_a_restart_in_the_shared_store(make_app: Any, wechat: FakeWeChat, kind: str) -> None:
    first_app = make_app(kind)
    seed(first_app)
    token = body(first_app.test_client().get(f"/token/wechat/{APP}"))["data"]
    # A second process on the same stores: a fresh in-process cache.
    second_app = make_app(kind)
    assert body(second_app.test_client().get(f"/token/wechat/{APP}"))["data"] == token
    assert wechat.count(STABLE) == 1


@pytest.mark.parametrize("save_model", ["auto", "all"])
def test_save_model_decides_the_tiers_written(make_app: Any, wechat: FakeWeChat, redis_prefix: str,
                                              redis_client: redis.Redis, save_model: str, tmp_path: Any) -> None:
    app = make_app("redis+sqlite", save_model=save_model)
    seed(app)
    token = body(app.test_client().get(f"/token/wechat/{APP}"))["data"]
    # The original's raw key, for existing readers, ending when serving stops.
    assert redis_client.get(f"{redis_prefix}wechat_{APP}") == token
    ttl_ms = redis_client.pttl(f"{redis_prefix}wechat_{APP}")
    assert (7200 - 300 - 5) * 1000 < ttl_ms <= (7200 - 300) * 1000
    rows = sqlite3.connect(app.extensions["pighand"].settings.sqlite_path).execute(
        "SELECT value FROM token").fetchall()
    assert [opened(app, r[0]) for r in rows] == ([token] if save_model == "all" else [])


def test_without_redis_tokens_go_to_sql(make_app: Any, wechat: FakeWeChat, mysql_db: str) -> None:
    app = make_app("mysql")
    seed(app)
    token = body(app.test_client().get(f"/token/wechat/{APP}"))["data"]
    rows = mysql_rows(mysql_db, "SELECT platform, appid, value, expires_at - fetched_at FROM token")
    assert [(r[0], r[1], opened(app, r[2]), r[3]) for r in rows] == [("wechat", APP, token,
                                                                      pytest.approx(7200, abs=1))]
    assert token not in rows[0][2]  # encrypted at rest


def test_lower_tier_backfills_redis(make_app: Any, wechat: FakeWeChat, redis_prefix: str,
                                    redis_client: redis.Redis) -> None:
    app = make_app("redis+mysql", save_model="all")
    seed(app)
    token = body(app.test_client().get(f"/token/wechat/{APP}"))["data"]
    for key in redis_client.scan_iter(match=f"{redis_prefix}*"):
        redis_client.delete(key)
    fresh = make_app("redis+mysql", save_model="all")  # empty in-process cache
    assert body(fresh.test_client().get(f"/token/wechat/{APP}"))["data"] == token
    assert wechat.count(STABLE) == 1
    assert redis_client.get(f"{redis_prefix}wechat_{APP}") == token
    assert redis_client.pttl(f"{redis_prefix}wechat_{APP}") > (7200 - 310) * 1000


def test_token_inside_margin_is_not_served(make_app: Any, wechat: FakeWeChat) -> None:
    # A 2 s token: margin min(300, 2/2) = 1 s, so it is served for 1 s.
    wechat.add_app("wx_short", "short-secret", expires_in=2)
    app = make_app("sqlite")
    seed(app, "wx_short", "short-secret")
    client = app.test_client()
    first = body(client.get("/token/wechat/wx_short"))["data"]
    assert body(client.get("/token/wechat/wx_short"))["data"] == first
    time.sleep(1.1)
    second = body(client.get("/token/wechat/wx_short"))["data"]
    assert second != first
    assert wechat.count(STABLE, appid="wx_short") == 2


def test_put_replaces_token_in_every_tier(make_app: Any, wechat: FakeWeChat, kind: str) -> None:
    app = make_app(kind)
    seed(app)
    client = app.test_client()
    old = body(client.get(f"/token/wechat/{APP}"))["data"]
    new = body(client.put(f"/token/wechat/{APP}"))["data"]
    assert new != old and wechat.is_valid(new)
    # Stable mode: the normal call hands back the same token, so a forced one follows.
    assert [c.get("force_refresh") for c in wechat.find(STABLE)] == [False, False, True]
    assert body(make_app(kind).test_client().get(f"/token/wechat/{APP}"))["data"] == new
    assert body(client.get(f"/token/wechat/{APP}"))["data"] == new


def test_put_with_stale_token_that_is_not_current_makes_no_call(make_app: Any, wechat: FakeWeChat,
                                                                 kind: str) -> None:
    app = make_app(kind)
    seed(app)
    client = app.test_client()
    current = body(client.get(f"/token/wechat/{APP}"))["data"]
    answer = client.put(f"/token/wechat/{APP}", json={"stale_token": "83_an_old_token"})
    assert body(answer)["data"] == current
    assert wechat.count(STABLE) == 1


@pytest.mark.parametrize("field", ["stale_token", "nowToken"])
def test_put_with_current_token_refreshes(make_app: Any, wechat: FakeWeChat, field: str) -> None:
    app = make_app("sqlite")
    seed(app)
    client = app.test_client()
    current = body(client.get(f"/token/wechat/{APP}"))["data"]
    new = body(client.put(f"/token/wechat/{APP}", json={field: current}))["data"]
    assert new != current and wechat.is_valid(new) and not wechat.is_valid(current)


def test_classic_mode(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app("sqlite", wechat_token_mode="classic")
    seed(app)
    client = app.test_client()
    old = body(client.get(f"/token/wechat/{APP}"))["data"]
    assert body(client.get(f"/token/wechat/{APP}"))["data"] == old
    new = body(client.put(f"/token/wechat/{APP}"))["data"]
    assert new != old and wechat.count(CLASSIC) == 2 and wechat.count(STABLE) == 0
    # The platform keeps the old one alive for 5 minutes while callers switch.
    assert wechat.is_valid(old) and wechat.is_valid(new)


# -- errors ------------------------------------------------------------------
def test_unknown_platform_is_404_listing_supported(make_app: Any) -> None:
    answer = make_app().test_client().get(f"/token/nope/{APP}")
    data = body(answer)
    assert answer.status_code == 404 and data["data"] is None and "wechat" in data["error"]


def test_unknown_appid_is_404(make_app: Any, wechat: FakeWeChat) -> None:
    answer = make_app().test_client().get("/token/wechat/wx_missing")
    assert answer.status_code == 404 and "wx_missing" in body(answer)["error"]
    assert wechat.count() == 0


@pytest.mark.parametrize("serving_path", ["fast"], indirect=True)  # memory is measured in this process
def test_distinct_unknown_appids_leave_no_lasting_state(make_app: Any, wechat: FakeWeChat) -> None:
    import gc
    import tracemalloc

    app = make_app("sqlite")
    seed(app)
    client = app.test_client()
    for i in range(100):  # warm: first-use allocations are not growth
        client.get(f"/token/wechat/wx_warm_{i}")
        client.put(f"/token/wechat/wx_warm_{i}")
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    for i in range(1000):
        assert client.get(f"/token/wechat/wx_nobody_{i:05d}").status_code == 404
        assert client.put(f"/token/wechat/wx_nobody_{i:05d}").status_code == 404
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Per-token locks were ~340 B each per worker: 1,000 appids kept 0.3 MB.
    assert after - before < 100_000, after - before
    db = sqlite3.connect(app.extensions["pighand"].settings.sqlite_path)
    assert db.execute("SELECT COUNT(*) FROM pighand_counter").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM refresh_failure").fetchone()[0] == 0
    refusals = db.execute("SELECT outcome FROM audit_log WHERE action = 'token.refresh'").fetchall()
    # One line per minute per client: the warm-up's, and this minute's first.
    assert 1 <= len(refusals) <= 2, refusals
    assert all(outcome.startswith("failed 404: no credential for wechat appid") for (outcome,) in refusals)
    assert wechat.count() == 0
    assert client.get(f"/token/wechat/{APP}").status_code == 200  # the real app is untouched


def test_an_appid_in_another_case_is_another_app_on_every_store(make_app: Any, wechat: FakeWeChat,
                                                                 kind: str) -> None:
    app = make_app(kind)
    seed(app)
    client = app.test_client()
    token = body(client.get(f"/token/wechat/{APP}"))["data"]
    for variant in (APP.upper(), "Wx_App_1"):
        answer = client.get(f"/token/wechat/{variant}")
        assert answer.status_code == 404 and token not in answer.get_data(as_text=True)
        assert client.put(f"/token/wechat/{variant}").status_code == 404
    assert wechat.count() == 1  # the variants never reached the platform
    # ... and put the real app in no cooldown: it refreshes at once.
    refreshed = client.put(f"/token/wechat/{APP}")
    assert refreshed.status_code == 200 and body(refreshed)["data"] != token


@pytest.mark.parametrize("appid", ["bad!id", "a" * 129, "x%20y"])
def test_malformed_appid_is_400(make_app: Any, appid: str) -> None:
    answer = make_app().test_client().get(f"/token/wechat/{appid}")
    assert answer.status_code == 400 and body(answer)["data"] is None


@pytest.mark.parametrize("payload,content_type", [
    ("{not json", "application/json"),
    ("[1, 2]", "application/json"),
    ('{"stale_token": 5}', "application/json"),
    ('{"stale_token": ""}', "application/json"),
    ('{"stale_token": null}', "application/json"),
    ('{"nowToken": 42, "stale_token": "x"}', "application/json"),
    ("\xff\xfe", "application/octet-stream"),
])
def test_malformed_put_body_is_400_and_calls_nothing(make_app: Any, wechat: FakeWeChat, payload: str,
                                                     content_type: str) -> None:
    app = make_app()
    seed(app)
    answer = app.test_client().put(f"/token/wechat/{APP}", data=payload.encode("latin-1"),
                                   content_type=content_type)
    assert answer.status_code == 400 and body(answer)["data"] is None
    assert wechat.count() == 0


@pytest.mark.parametrize("query,payload", [
    ("stale_token=", '{"stale_token": "83_current"}'),
    ("stale_token=83_other", '{"stale_token": "83_current"}'),
    ("nowToken=83_other", '{"stale_token": "83_current"}'),
    ("stale_token=a&stale_token=b", ""),
    ("", '{"stale_token": "83_current", "nowToken": "83_other"}'),
])
def test_conflicting_stale_tokens_are_400_and_call_nothing(make_app: Any, wechat: FakeWeChat, query: str,
                                                          payload: str) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    current = body(client.get(f"/token/wechat/{APP}"))["data"]
    calls = wechat.count()
    answer = client.put(f"/token/wechat/{APP}?{query.replace('83_current', current)}",
                        data=payload.replace("83_current", current), content_type="application/json")
    assert answer.status_code == 400 and body(answer)["data"] is None
    assert "stale_token" in body(answer)["error"] and current not in body(answer)["error"]
    assert wechat.count() == calls and wechat.is_valid(current)


def test_the_same_stale_token_in_query_and_body_is_one(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    current = body(client.get(f"/token/wechat/{APP}"))["data"]
    answer = client.put(f"/token/wechat/{APP}?stale_token={current}", json={"nowToken": current})
    assert answer.status_code == 200 and body(answer)["data"] != current


def test_oversized_body_is_413(make_app: Any) -> None:
    app = make_app()
    seed(app)
    answer = app.test_client().put(f"/token/wechat/{APP}", data=b"x" * (65 * 1024))
    assert answer.status_code == 413 and body(answer)["data"] is None


@pytest.mark.parametrize("method", ["POST", "DELETE", "PATCH"])
def test_wrong_method_is_405_with_allow(make_app: Any, method: str) -> None:
    answer = make_app().test_client().open(f"/token/wechat/{APP}", method=method)
    assert answer.status_code == 405 and body(answer)["data"] is None
    assert {"GET", "PUT"} <= {m.strip() for m in answer.headers["Allow"].split(",")}


def test_unknown_route_is_404_envelope(make_app: Any) -> None:
    answer = make_app().test_client().get("/nothing/here")
    assert answer.status_code == 404 and body(answer)["data"] is None


@pytest.mark.parametrize("mode", ["stable", "classic"])
def test_rejected_secret_is_502_with_errcode_and_no_secret(make_app: Any, wechat: FakeWeChat, mode: str) -> None:
    app = make_app(wechat_token_mode=mode)
    seed(app, APP, "wrong-secret-value")
    answer = app.test_client().get(f"/token/wechat/{APP}")
    data = body(answer)
    assert answer.status_code == 502 and data["data"] is None
    assert ("40125" if mode == "stable" else "40001") in data["error"]
    assert "wrong-secret-value" not in answer.get_data(as_text=True)
    assert wechat.count() == 1  # configuration errors are not retried


def test_ip_whitelist_error_names_the_ip(make_app: Any, wechat: FakeWeChat) -> None:
    wechat.add_app("wx_ip", "ip-secret", whitelist_error_ip="203.0.113.7")
    app = make_app()
    seed(app, "wx_ip", "ip-secret")
    answer = app.test_client().get("/token/wechat/wx_ip")
    assert answer.status_code == 502
    assert "40164" in body(answer)["error"] and "203.0.113.7" in body(answer)["error"]
    assert wechat.count() == 1


def test_platform_timeout_is_504(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app(upstream_timeout=0.3)
    seed(app)
    wechat.delay(1.0)
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 504 and body(answer)["data"] is None
    no_secret(answer)


def test_platform_5xx_is_retried_then_502(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    wechat.fail_next(5, status=500)
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 502 and "500" in body(answer)["error"]
    assert wechat.count() == 3


def test_platform_recovers_after_transient_errors(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    wechat.fail_next(1, status=503)
    wechat.fail_with_errcode_next(1, -1, "system error")
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 200 and wechat.is_valid(body(answer)["data"])


@pytest.mark.parametrize("garbled", [b"<html><body>502 Bad Gateway</body></html>", b'{"access_token": "83_abc',
                                     "not json at all"], ids=["html", "truncated-json", "text"])
def test_a_garbled_200_is_retried_like_a_5xx(make_app: Any, wechat: FakeWeChat, garbled: Any) -> None:
    app = make_app()
    seed(app)
    wechat.fail_next(1, status=200, body=garbled)
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 200 and wechat.is_valid(body(answer)["data"])
    assert wechat.count() == 2  # the garbled answer, then the retry


def test_a_4xx_page_is_not_retried(make_app: Any, wechat: FakeWeChat) -> None:
    # A wrong base URL or path: asking again gets the same page.
    app = make_app()
    seed(app)
    wechat.fail_next(5, status=404, body=b"<html>404 Not Found</html>")
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 502 and "HTTP 404" in body(answer)["error"]
    assert wechat.count() == 1


@pytest.mark.parametrize("serving_path", ["flask"], indirect=True)  # the service's clock is this test's
def test_an_app_with_nothing_to_serve_recovers_within_15_s_of_an_outage(
        tmp_path: Path, request: pytest.FixtureRequest, wechat: FakeWeChat) -> None:
    now = [time.time()]
    app = create_app(overrides={**storage_overrides("sqlite", request, tmp_path), **app_overrides(wechat)},
                     clock=lambda: now[0])
    seed(app)
    client = app.test_client()
    wechat.fail_next(10_000, status=503)
    calls: list[float] = []  # service-clock times of the platform calls
    for _ in range(240):  # 120 s of outage, a GET every 0.5 s
        before = wechat.count()
        assert client.get(f"/token/wechat/{APP}").status_code == 502
        calls += [now[0]] * (wechat.count() - before)
        now[0] += 0.5
    # After the first attempt's retries, one call per probe: 4 a minute.
    last_minute = [t for t in calls if t >= now[0] - 60]
    assert len(last_minute) <= 4, (len(calls), last_minute)
    wechat.clear_faults()
    recovered = now[0]
    while client.get(f"/token/wechat/{APP}").status_code != 200:
        now[0] += 0.5
        assert now[0] - recovered <= 15, "no token within 15 s of the platform's recovery"


def test_classic_transport_error_hides_secret_in_url(make_app: Any, wechat: FakeWeChat) -> None:
    # A port nothing listens on: requests' error text carries the full URL,
    # query string (with ?secret=) included.
    app = make_app(wechat_token_mode="classic", wechat_api_base="http://127.0.0.1:9", upstream_timeout=0.5)
    seed(app)
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 502
    no_secret(answer)


def test_storage_unavailable_is_503(make_app: Any) -> None:
    app = make_app(mysql_host="127.0.0.1", mysql_port=9, mysql_database="nothing")
    answer = app.test_client().get(f"/token/wechat/{APP}")
    assert answer.status_code == 503 and body(answer)["data"] is None


def test_unexpected_error_is_500_without_trace(make_app: Any, wechat: FakeWeChat) -> None:
    app = make_app()
    seed(app)
    db = sqlite3.connect(app.extensions["pighand"].settings.sqlite_path)
    db.execute("INSERT INTO token VALUES ('wechat', ?, 'v', 'not-a-number', 'x', 0)", (APP,))
    db.commit()
    answer = app.test_client().get(f"/token/wechat/{APP}")
    data = body(answer)
    assert answer.status_code == 500 and data["data"] is None
    assert "Traceback" not in data["error"] and "ValueError" not in data["error"]


# -- stores failing ------------------------------------------------------------
def test_sql_down_serves_from_redis_and_refuses_credential_writes(make_app: Any, wechat: FakeWeChat,
                                                                   redis_prefix: str) -> None:
    from pighand_token.core.domain import Credential
    from pighand_token.core.errors import Unavailable
    healthy = make_app("redis+mysql")
    seed(healthy)
    token = body(healthy.test_client().get(f"/token/wechat/{APP}"))["data"]
    # Same Redis, MySQL unreachable.
    broken = make_app("redis+sqlite", mysql_host="127.0.0.1", mysql_port=9, redis_key_prefix=redis_prefix)
    client = broken.test_client()
    assert body(client.get(f"/token/wechat/{APP}"))["data"] == token
    answer = client.get("/token/wechat/wx_other")  # needs the credential table
    assert answer.status_code == 503 and "MySQL" in body(answer)["error"]
    with pytest.raises(Unavailable):
        broken.extensions["pighand"].credentials.add(Credential("wechat", "wx_new", "s"))
    assert wechat.count(STABLE) == 1


def test_redis_down_at_start_serves_and_keeps_tokens_in_sql(make_app: Any, wechat: FakeWeChat,
                                                             tmp_path: Any) -> None:
    app = make_app("sqlite", redis_host="127.0.0.1", redis_port=9)
    seed(app)
    client = app.test_client()
    token = body(client.get(f"/token/wechat/{APP}"))["data"]
    rows = sqlite3.connect(app.extensions["pighand"].settings.sqlite_path).execute(
        "SELECT value FROM token").fetchall()
    assert [opened(app, r[0]) for r in rows] == [token]  # save_model auto falls back to SQL while Redis is down
    # Another worker (empty memory) finds it in SQL: no second platform call.
    other = make_app("sqlite", redis_host="127.0.0.1", redis_port=9,
                     sqlite_path=app.extensions["pighand"].settings.sqlite_path)
    assert body(other.test_client().get(f"/token/wechat/{APP}"))["data"] == token
    assert wechat.count(STABLE) == 1


IN_PROCESS = pytest.mark.parametrize("serving_path", ["fast", "flask"], indirect=True)


@IN_PROCESS  # looks inside the worker
def test_cached_get_is_answered_without_flask_on_the_hot_path(make_app: Any, wechat: FakeWeChat,
                                                              serving_path: str) -> None:
    app = make_app("sqlite")
    seed(app)
    through_flask: list[str] = []
    app.before_request(lambda: through_flask.append("x") and None)
    client = app.test_client()
    first = client.get(f"/token/wechat/{APP}", headers={"X-Request-Id": "abc"})
    cached = client.get(f"/token/wechat/{APP}", headers={"X-Request-Id": "abc"})
    assert first.get_data() == cached.get_data() and first.status_code == cached.status_code == 200
    assert first.headers["Content-Type"] == cached.headers["Content-Type"] == "application/json"
    assert first.headers["Cache-Control"] == cached.headers["Cache-Control"]
    assert first.headers["Content-Length"] == cached.headers["Content-Length"] == str(len(cached.get_data()))
    assert cached.headers["X-Request-Id"] == "abc"
    assert len(through_flask) == (1 if serving_path == "fast" else 2)


@IN_PROCESS  # a real connection here always comes from loopback
def test_auth_off_serves_only_loopback_callers(make_app: Any, wechat: FakeWeChat, serving_path: str) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}").status_code == 200  # warm: the hot path could answer next
    remote = client.get(f"/token/wechat/{APP}", environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert remote.status_code == 403 and body(remote)["data"] is None and "loopback" in body(remote)["error"]
    assert client.get(f"/token/wechat/{APP}", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200


def test_cooldown_holds_while_redis_is_down(make_app: Any, wechat: FakeWeChat, serving_path: str) -> None:
    app = make_app("sqlite", redis_host="127.0.0.1", redis_port=9)
    seed(app, APP, "wrong-secret")
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}").status_code == 502
    resting = client.get(f"/token/wechat/{APP}")
    assert resting.status_code == 502 and int(resting.headers["Retry-After"]) >= 1
    assert wechat.count() == 1  # the pause was kept in SQL


@IN_PROCESS  # the service's clock is this test's
def test_answers_say_how_long_the_token_is_served(tmp_path: Path, request: pytest.FixtureRequest,
                                                  wechat: FakeWeChat, serving_path: str) -> None:
    now = [1_800_000_000.25]
    app = create_app(overrides={**storage_overrides("sqlite", request, tmp_path), **app_overrides(wechat)},
                     clock=lambda: now[0])
    seed(app)
    client = app.test_client()
    # A 7200 s token is served until 300 s (corn_interval) before it expires.
    fetched = client.get(f"/token/wechat/{APP}", headers={"X-Request-Id": "r1"})
    token = body(fetched)["data"]
    assert fetched.get_data() == f'{{"code":200,"data":"{token}","error":"","expires_in":6900}}'.encode()
    # Answered from memory (the hot path, where it is on): the same bytes and headers.
    cached = client.get(f"/token/wechat/{APP}", headers={"X-Request-Id": "r1"})
    assert cached.get_data() == fetched.get_data()
    assert dict(cached.headers) == dict(fetched.headers)
    # 2.5 s later: whole seconds left, rounded down, never the second that is already going.
    now[0] += 2.5
    later = client.get(f"/token/wechat/{APP}")
    assert body(later)["expires_in"] == 6897 and later.headers["Cache-Control"] == "private, max-age=6897"
    assert later.headers["Content-Length"] == str(len(later.get_data()))
    now[0] += 0.5
    assert body(client.get(f"/token/wechat/{APP}"))["expires_in"] == 6897
    now[0] += 0.25
    assert body(client.get(f"/token/wechat/{APP}"))["expires_in"] == 6896
    assert wechat.count(STABLE) == 1


@IN_PROCESS  # the service's clock is this test's
def test_put_and_ticket_answers_say_how_long_they_are_served(tmp_path: Path, request: pytest.FixtureRequest,
                                                             wechat: FakeWeChat, serving_path: str) -> None:
    now = [1_800_000_000.0]
    app = create_app(overrides={**storage_overrides("sqlite", request, tmp_path), **app_overrides(wechat)},
                     clock=lambda: now[0])
    seed(app)
    client = app.test_client()
    first = body(client.get(f"/token/wechat/{APP}"))["data"]
    now[0] += 40  # past force_refresh's 30 s spacing
    replaced = body(client.put(f"/token/wechat/{APP}", json={"stale_token": first}))
    assert replaced["data"] != first and replaced["expires_in"] == 6900
    # Reported again: the current token, with what is left of it.
    now[0] += 10
    again = body(client.put(f"/token/wechat/{APP}", json={"stale_token": first}))
    assert again["data"] == replaced["data"] and again["expires_in"] == 6890
    ticket = client.get(f"/ticket/wechat/{APP}/jsapi")
    assert body(ticket)["expires_in"] == 6900  # tickets live 7200 s, with the same margin
    now[0] += 100
    assert body(client.get(f"/ticket/wechat/{APP}/jsapi"))["expires_in"] == 6800
