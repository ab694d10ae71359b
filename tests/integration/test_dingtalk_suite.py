"""DingTalk third-party enterprise apps (dingtalk_suite) and the corps that
authorize them (dingtalk_corp), against the fake DingTalk over loopback HTTP.
The fake pushes real encrypted events (dingtalk-sdk's crypto) to the shipped
server's callback URL and reads every answer back with dingtalk-sdk."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dingtalk.crypto import DingTalkCrypto

from pighand_token.app import create_app
from pighand_token.core.domain import PushedTicket, TokenKey
from pighand_token.providers.third_party import AppSecrets
from tests.conftest import clean_env, run_cli, storage_overrides
from tests.e2e.test_workers import envelope
from tests.fakes.dingtalk_suite import CORP, CORP_TOKEN_PATH, SUITE, SUITE_TOKEN_PATH, FakeDingTalkSuite
from tests.integration.isv_hub import Hub, sqlite_settings

SUITE_KEY = "suitekey0000000001"
SUITE_SECRET = "suite-S3cr3t-0001-dingtalk"
CB_TOKEN = "cbT0kenDing1"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_KEY = "suitekey0000000002"
OTHER_SECRET = "suite-S3cr3t-0002-dingtalk"
OTHER_TOKEN = "cbT0kenDing2"
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
CORP_ID = "dingcorp00000000001"
CORP_APPID = f"{SUITE_KEY}:{CORP_ID}"
CORP_OWNER = CORP_APPID  # the fake's owner of the corp's tokens
CALLBACK = f"/callback/dingtalk_suite/{SUITE_KEY}"


def suite_secret(secret: str = SUITE_SECRET, token: str = CB_TOKEN, key: str = AES_KEY) -> str:
    return AppSecrets(secret, token, key).encode()


@dataclass
class Running(Hub[FakeDingTalkSuite]):
    api_base = "dingtalk_api_base"

    def grants(self) -> list[Any]:
        return self.container().callbacks.grants.list("dingtalk_corp", SUITE_KEY)

    def ticket(self) -> Any:
        return self.container().callbacks.tickets.latest("dingtalk_suite", SUITE_KEY)

    def authorize(self, *, sync: bool = False) -> None:
        """A ticket, then the corp authorizes the suite."""
        assert self.fake.push_ticket(SUITE_KEY, sync=sync).ok
        delivery = self.fake.authorize(SUITE_KEY, CORP_ID, corp_name="Acme", sync=sync)
        assert delivery.ok, (delivery.status, delivery.answer, delivery.reply_error, self.server.log()[-3000:])

    def secrets(self) -> list[str]:
        """Everything that must never leave the service."""
        values = [SUITE_SECRET, OTHER_SECRET, CB_TOKEN, AES_KEY, *self.fake.issued()]
        for delivery in self.fake.deliveries:
            for name in ("SuiteTicket", "AuthCode"):
                if name in delivery.message:
                    values.append(delivery.message[name])
        for suite_key in (SUITE_KEY, OTHER_KEY):
            values += self.fake._tickets.get(suite_key, [])
        return values


@pytest.fixture
def fake() -> Iterator[FakeDingTalkSuite]:
    with FakeDingTalkSuite() as platform:
        platform.add_suite(SUITE_KEY, SUITE_SECRET, token=CB_TOKEN, aes_key=AES_KEY)
        platform.add_suite(OTHER_KEY, OTHER_SECRET, token=OTHER_TOKEN, aes_key=OTHER_AES_KEY)
        yield platform


@pytest.fixture
def running(fake: FakeDingTalkSuite, tmp_path: Path) -> Iterator[Running]:
    settings = sqlite_settings(tmp_path, ("dingtalk_suite", SUITE_KEY, suite_secret()))
    with Running.serve(fake, tmp_path, settings, {SUITE_KEY: CALLBACK}, log_level="debug") as running:
        yield running


# -- the callback URL ----------------------------------------------------------------
@pytest.mark.parametrize("event_type", ["check_url", "check_update_suite_url"])
def test_url_checks_are_answered_with_the_encrypted_success_and_store_nothing(running: Running,
                                                                              event_type: str) -> None:
    for old_names in (False, True):
        check = running.fake.check_url(SUITE_KEY, event_type, old_names=old_names)
        assert check.ok, (check.status, check.answer, check.reply_error)
        answer = json.loads(check.answer)
        assert set(answer) == {"msg_signature", "timeStamp", "nonce", "encrypt"}
    assert running.ticket() is None and running.grants() == []


def test_check_create_suite_url_is_answered_for_the_test_suite_key_it_names(running: Running) -> None:
    check = running.fake.check_url(SUITE_KEY, "check_create_suite_url", test_suite_key="suite4testkey000001")
    assert check.ok, (check.status, check.answer, check.reply_error)
    # Another event encrypted for another receive id is refused.
    other = running.fake.push(SUITE_KEY, {"EventType": "suite_ticket", "SuiteTicket": "t1", "TimeStamp": "1"},
                              receive_id="suite4testkey000001")
    assert other.status == 401 and running.ticket() is None


# -- suite tickets and the suite token --------------------------------------------------
def test_without_a_ticket_tokens_are_503_saying_dingtalk_has_no_repush_api(running: Running) -> None:
    answer = running.get(f"/token/dingtalk_suite/{SUITE_KEY}")
    assert answer.status_code == 503
    error = envelope(answer)["error"]
    assert "suite_ticket" in error and "no API to ask for one" in error and "developer console" in error
    assert CALLBACK in error and int(answer.headers["Retry-After"]) > 0
    assert running.fake.count() == 0  # nothing to ask DingTalk


def test_a_pushed_ticket_makes_the_suite_token_and_an_older_redelivery_is_ignored(running: Running) -> None:
    fake = running.fake
    first = fake.push_ticket(SUITE_KEY)
    assert first.ok and first.reply == "success"
    fake.advance(1200)  # DingTalk's next push, 20 minutes later
    second = fake.push_ticket(SUITE_KEY)
    assert second.ok
    again = fake.redeliver(first)
    assert again.ok
    stored = running.ticket()
    assert stored is not None and stored.value == second.message["SuiteTicket"]
    answer = running.get(f"/token/dingtalk_suite/{SUITE_KEY}")
    assert answer.status_code == 200, answer.text
    assert envelope(answer)["data"] == fake.current_token(SUITE, SUITE_KEY)
    call = fake.last(SUITE_TOKEN_PATH)
    assert call is not None and call["suite_ticket"] == second.message["SuiteTicket"] and call["status"] == 200
    running.assert_no_secret_in_log()


def test_a_refused_ticket_is_retired_503_awaiting_until_the_next_push(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(SUITE_KEY).ok
    fake.issue_ticket(SUITE_KEY)  # a newer ticket whose push was lost: DingTalk refuses ours (853005)
    refused = running.get(f"/token/dingtalk_suite/{SUITE_KEY}")
    assert refused.status_code == 503, refused.text
    error = envelope(refused)["error"]
    assert "853005" in error and "developer console" in error and int(refused.headers["Retry-After"]) > 0
    assert fake.count(SUITE_TOKEN_PATH) == 1
    # Retired for every worker and every corp: no call with it again.
    for _ in range(3):
        again = running.get(f"/token/dingtalk_suite/{SUITE_KEY}")
        assert again.status_code == 503 and "refused" in envelope(again)["error"]
    assert fake.count(SUITE_TOKEN_PATH) == 1
    # The next push ends the wait at once.
    assert fake.push_ticket(SUITE_KEY).ok
    answer = running.get(f"/token/dingtalk_suite/{SUITE_KEY}")
    assert answer.status_code == 200, answer.text
    assert fake.is_valid(envelope(answer)["data"])
    assert not [s for s in running.secrets() if s in refused.text]
    running.assert_no_secret_in_log()


def test_a_corp_token_refused_for_its_ticket_in_either_shape_waits_for_the_next_push(running: Running) -> None:
    fake = running.fake
    for shape in ({"errcode": 853005, "errmsg": "签名中套件ticket参数无效"}, None):
        running.authorize()
        if shape is None:
            fake.issue_ticket(SUITE_KEY)  # the new API's answer: HTTP 400 {"code": "853005"}
        else:
            fake.fail_next(1, 200, shape, path=CORP_TOKEN_PATH)
        answer = running.get(f"/token/dingtalk_corp/{CORP_APPID}")
        assert answer.status_code == 503, answer.text
        assert "853005" in envelope(answer)["error"] and "developer console" in envelope(answer)["error"]
        calls = fake.count(CORP_TOKEN_PATH)
        assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 503
        assert running.get(f"/token/dingtalk_suite/{SUITE_KEY}").status_code == 503  # retired for the suite too
        assert fake.count(CORP_TOKEN_PATH) == calls and fake.count(SUITE_TOKEN_PATH) == 0
        fake.advance(60)
    assert fake.push_ticket(SUITE_KEY).ok
    assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200


# -- corps ----------------------------------------------------------------------------
@pytest.mark.parametrize("sync", [False, True], ids=["http_push", "sync_http_push"])
def test_an_authorized_corp_is_recorded_and_its_token_made_from_the_ticket(running: Running, sync: bool) -> None:
    fake = running.fake
    running.authorize(sync=sync)
    [grant] = running.grants()
    assert grant.account == CORP_ID and grant.secret == ""  # nothing of the code is kept
    info = json.loads(grant.info)
    assert info["event"] == ("org_suite_auth" if sync else "tmp_auth_code")
    if sync:
        assert info["corp_name"] == "Acme"
    answer = running.get(f"/token/dingtalk_corp/{CORP_APPID}")
    assert answer.status_code == 200, answer.text
    token = envelope(answer)["data"]
    assert token == fake.current_token(CORP, CORP_OWNER) and fake.is_valid(token)
    call = fake.last(CORP_TOKEN_PATH)
    assert call is not None and call["auth_corp_id"] == CORP_ID
    assert call["suite_ticket"] == fake.current_ticket(SUITE_KEY)
    # Refreshed within its life, DingTalk hands back the same token, extended.
    before = fake.token_info(token)
    assert before is not None
    expires_at = before.expires_at
    fake.advance(600)
    again = requests.put(running.url(f"/token/dingtalk_corp/{CORP_APPID}"), json={"stale_token": token},
                         timeout=15)
    assert again.status_code == 200 and envelope(again)["data"] == token
    after = fake.token_info(token)
    assert after is not None and after.expires_at > expires_at
    running.assert_no_secret_in_log()


def test_redelivered_and_repeated_authorizations_change_nothing(running: Running) -> None:
    fake = running.fake
    running.authorize()
    [grant] = running.grants()
    authorized = [d for d in fake.deliveries if d.event_type == "tmp_auth_code"][-1]
    again = fake.redeliver(authorized)
    assert again.ok, again.answer
    assert running.grants() == [grant]
    # change_auth re-records the corp (the same row, its event noted).
    assert fake.change_auth(SUITE_KEY, CORP_ID).ok
    [changed] = running.grants()
    assert changed.authorized_at == grant.authorized_at and json.loads(changed.info)["event"] == "change_auth"
    actions = [e.action for e in running.container().audit.tail(20)]
    assert actions.count("callback.tmp_auth_code") == 1


def test_change_auth_records_a_corp_whose_authorization_push_was_lost(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(SUITE_KEY).ok
    fake.authorize(SUITE_KEY, CORP_ID, send=False)
    assert fake.change_auth(SUITE_KEY, CORP_ID).ok
    assert [g.account for g in running.grants()] == [CORP_ID]
    assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200


@pytest.mark.parametrize("sync", [False, True], ids=["http_push", "sync_http_push"])
def test_suite_relieve_forgets_the_corp_and_redeliveries_undo_nothing(running: Running, sync: bool) -> None:
    fake = running.fake
    running.authorize(sync=sync)
    assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200
    fake.advance(5)
    assert fake.relieve(SUITE_KEY, CORP_ID, sync=sync).ok
    answer = running.get(f"/token/dingtalk_corp/{CORP_APPID}")
    assert answer.status_code == 404, answer.text
    assert "has not authorized" in envelope(answer)["error"]
    assert running.grants() == []
    actions = [(e.action, e.appid) for e in running.container().audit.tail(20)]
    relieved = "callback.org_suite_relieve" if sync else "callback.suite_relieve"
    assert (relieved, SUITE_KEY) in actions
    # A redelivery of the removal changes nothing; a corp never recorded is 404 with no call.
    removal = [d for d in fake.deliveries if d.ok][-1]
    assert fake.redeliver(removal).ok and running.grants() == []
    calls = fake.count()
    assert running.get(f"/token/dingtalk_corp/{SUITE_KEY}:dingnobody0000001").status_code == 404
    assert fake.count() == calls
    # Authorized anew, the corp is not forgotten by the old removal delivered late.
    fake.advance(5)
    assert fake.authorize(SUITE_KEY, CORP_ID, sync=sync).ok
    assert fake.redeliver(removal).ok
    assert [g.account for g in running.grants()] == [CORP_ID]
    assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200


def test_a_sync_push_carries_several_rows_handled_in_order(running: Running) -> None:
    fake = running.fake
    ticket = fake.issue_ticket(SUITE_KEY)
    rows = [fake.sync_row(SUITE_KEY, 2, {"syncAction": "suite_ticket", "suiteTicket": ticket}),
            fake.sync_row(SUITE_KEY, 4, {"syncAction": "org_suite_auth",
                                          "auth_corp_info": {"corpid": CORP_ID, "corp_name": "Acme"}},
                          corp_id=CORP_ID),
            fake.sync_row(SUITE_KEY, 7, {"syncAction": "org_micro_app_stop", "agentId": 3000001}, corp_id=CORP_ID)]
    fake.add_authorization(SUITE_KEY, CORP_ID, "Acme")  # what the org_suite_auth row tells
    assert fake.push_sync(SUITE_KEY, rows).ok
    assert fake.push_sync(SUITE_KEY, [fake.sync_row(SUITE_KEY, 13, {"syncAction": "user_add_org"})],
                          event_type="SYNC_HTTP_PUSH_MEDIUM").ok
    stored = running.ticket()
    assert stored is not None and stored.value == ticket
    assert [g.account for g in running.grants()] == [CORP_ID]
    assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200


# -- refused callbacks ------------------------------------------------------------------
def test_forged_tampered_and_misrouted_pushes_are_401_and_store_nothing(running: Running) -> None:
    fake = running.fake
    for delivery in (fake.push_ticket(SUITE_KEY, bad_signature=True), fake.push_ticket(SUITE_KEY, tamper=True),
                     fake.push_ticket(SUITE_KEY, as_suite=OTHER_KEY), fake.push_ticket(SUITE_KEY, receive_id="x1"),
                     fake.authorize(SUITE_KEY, CORP_ID, bad_signature=True)):
        assert delivery.status == 401, (delivery.variant, delivery.status, delivery.answer)
        assert json.loads(delivery.answer)["code"] == 401
        assert not [s for s in running.secrets() if s in delivery.answer]
    # An event naming another suite, sealed with this one's key, is refused too.
    named = fake.push(SUITE_KEY, {"EventType": "suite_ticket", "SuiteKey": OTHER_KEY, "SuiteTicket": "namedTicket0001",
                                  "TimeStamp": "1700000000000"})
    assert named.status == 401
    assert running.ticket() is None and running.grants() == []
    assert running.get(f"/token/dingtalk_suite/{SUITE_KEY}").status_code == 503
    running.assert_no_secret_in_log()


def test_a_replayed_push_changes_nothing(running: Running) -> None:
    fake = running.fake
    running.authorize()
    ticket, grants = running.ticket(), running.grants()
    for delivery in [d for d in fake.deliveries if d.ok]:
        replay = fake.redeliver(delivery)
        assert replay.ok, replay.answer
    assert running.ticket() == ticket and running.grants() == grants


def test_unknown_suite_is_404(running: Running) -> None:
    fake = running.fake
    fake.set_callback_url(OTHER_KEY, running.url(f"/callback/dingtalk_suite/{OTHER_KEY}"))
    delivery = fake.push_ticket(OTHER_KEY)
    assert delivery.status == 404, delivery.answer
    assert OTHER_KEY in json.loads(delivery.answer)["error"]
    assert fake.check_url(OTHER_KEY).status == 404
    assert fake.push_ticket(SUITE_KEY).ok


def test_huge_and_malformed_bodies_are_refused_and_store_nothing(running: Running) -> None:
    fake = running.fake
    good = fake.push_ticket(SUITE_KEY, bad_signature=True)  # a real query string to send bodies with
    url = running.url(CALLBACK)
    big = requests.post(url, params=good.params, data=b'{"encrypt": "' + b"A" * (65 * 1024) + b'"}', timeout=15)
    assert big.status_code == 413
    for body in (b"not json", b"[]", b'{"encrypt": 5}', b'{"Encrypt": "x"}', b"", b'{"encrypt": "abc"'):
        answer = requests.post(url, params=good.params, data=body, timeout=15)
        assert answer.status_code == 400, (body[:20], answer.text)
        assert envelope(answer)["code"] == 400
    missing = requests.post(url, data=good.body, timeout=15)  # no signature parameters
    assert missing.status_code == 400
    # Signed, decrypting, but not the event DingTalk sends: 400 too.
    for event in ({"EventType": "suite_ticket", "TimeStamp": "1700000000000"},
                  {"EventType": "tmp_auth_code", "AuthCode": "c"},
                  {"EventType": "SYNC_HTTP_PUSH_HIGH", "bizData": "rows"}):
        wrong = fake.push(SUITE_KEY, event)
        assert wrong.status == 400, (event, wrong.answer)
    assert requests.get(url, params=good.params, timeout=15).status_code == 405
    assert running.ticket() is None and running.grants() == []


def test_unknown_events_are_acknowledged(running: Running) -> None:
    for event in ({"EventType": "market_buy", "SuiteKey": SUITE_KEY}, {"EventType": "org_micro_app_stop"}, {}):
        delivery = running.fake.push(SUITE_KEY, event)
        assert delivery.ok, (event, delivery.answer)
    assert running.ticket() is None and running.grants() == []


def test_dingtalk_sdk_interop_its_push_is_accepted_and_it_reads_our_answer(running: Running) -> None:
    """An event sealed by dingtalk-sdk here (not the fake) and the answer read with it."""
    sdk = DingTalkCrypto(CB_TOKEN, AES_KEY, SUITE_KEY)
    event = {"EventType": "suite_ticket", "SuiteKey": SUITE_KEY, "SuiteTicket": "sdkTicket0001",
             "TimeStamp": "1700000000000"}
    signed = sdk.encrypt_message(json.dumps(event), nonce="nonce12345678901", timestamp="1700000000000")
    answer = requests.post(running.url(CALLBACK), params={"signature": signed["msg_signature"],
                                                          "timestamp": signed["timeStamp"], "nonce": signed["nonce"]},
                           json={"encrypt": signed["encrypt"]}, timeout=15)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    reply = answer.json()
    assert sdk.decrypt_encrypt_str(reply["msg_signature"], reply["timeStamp"], reply["nonce"],
                                   reply["encrypt"]) == "success"
    stored = running.ticket()
    assert stored is not None and stored.value == "sdkTicket0001" and stored.created_at == 1700000000.0


# -- the scheduler, the CLI, credentials -----------------------------------------------------
def test_scheduler_refreshes_suite_and_corp_tokens(running: Running) -> None:
    fake = running.fake
    running.authorize()
    container = running.container()
    report = container.service.refresh_due()
    assert {TokenKey("dingtalk_suite", SUITE_KEY), TokenKey("dingtalk_corp", CORP_APPID)} <= set(report.refreshed)
    assert not report.failed
    assert fake.count(CORP_TOKEN_PATH) == 1 and fake.count(SUITE_TOKEN_PATH) == 1
    served = envelope(running.get(f"/token/dingtalk_corp/{CORP_APPID}"))["data"]
    assert fake.is_valid(served) and fake.count(CORP_TOKEN_PATH) == 1


def test_cli_adds_a_suite_and_lists_its_corps_without_tokens(fake: FakeDingTalkSuite, tmp_path: Path) -> None:
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    env = clean_env(dingtalk_api_base=fake.base_url, is_enable_schedule=False, **settings)
    added = run_cli("platform", "add", "dingtalk_suite", SUITE_KEY, "--secret", SUITE_SECRET, "--callback-token",
                    CB_TOKEN, "--aes-key", AES_KEY, env=env)
    assert added.returncode == 0, added.stderr
    bad = run_cli("platform", "add", "dingtalk_suite", OTHER_KEY, "--secret", OTHER_SECRET, "--callback-token",
                  OTHER_TOKEN, "--aes-key", "short", env=env)
    assert bad.returncode != 0 and "aes_key" in bad.stderr and "43 characters" in bad.stderr
    wrong_option = run_cli("platform", "add", "dingtalk_suite", OTHER_KEY, "--secret", OTHER_SECRET,
                           "--callback-token", OTHER_TOKEN, "--encoding-aes-key", OTHER_AES_KEY, env=env)
    assert wrong_option.returncode != 0 and "--aes-key" in wrong_option.stderr
    corp = run_cli("platform", "add", "dingtalk_corp", CORP_APPID, "--secret", "x", env=env)
    assert corp.returncode != 0 and "add the suite" in corp.stderr
    with Running.serve(fake, tmp_path, settings, {SUITE_KEY: CALLBACK}) as running:
        running.authorize()
        assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200
        listing = run_cli("dingtalk", "corps", SUITE_KEY, env=env)
        assert listing.returncode == 0, listing.stderr
        assert CORP_ID in listing.stdout and "valid" in listing.stdout and "1 corp(s)" in listing.stdout
        assert not [s for s in running.secrets() if s in listing.stdout + listing.stderr]
        unknown = run_cli("dingtalk", "corps", OTHER_KEY, env=env)
        assert unknown.returncode != 0 and "platform add dingtalk_suite" in unknown.stderr
        running.assert_no_secret_in_log()


def test_authorize_routes_say_dingtalk_needs_no_code(running: Running) -> None:
    page = running.get(f"/authorize/dingtalk_suite/{SUITE_KEY}", params={"redirect_uri": "https://e.example/x"})
    assert page.status_code == 400 and "app market" in envelope(page)["error"]
    code = requests.post(running.url(f"/authorize/dingtalk_suite/{SUITE_KEY}"), json={"auth_code": "c"},
                         timeout=15)
    assert code.status_code == 400 and "needs no code" in envelope(code)["error"]
    assert running.fake.count() == 0


def test_platform_add_prompts_for_the_aes_key_and_stores_the_three_secrets_together(fake: FakeDingTalkSuite,
                                                                                    tmp_path: Path) -> None:
    env = clean_env(sqlite_path=str(tmp_path / "pighand.sqlite3"), dingtalk_api_base=fake.base_url,
                    is_enable_schedule=False)
    added = run_cli("platform", "add", "dingtalk_suite", SUITE_KEY, input=f"{SUITE_SECRET}\n{CB_TOKEN}\n{AES_KEY}\n",
                    env=env)
    assert added.returncode == 0, added.stderr
    asked = (added.stdout + added.stderr).lower()
    assert "callback-token" in asked and "aes-key" in asked
    assert not [s for s in (SUITE_SECRET, CB_TOKEN, AES_KEY) if s in added.stdout + added.stderr]
    listed = run_cli("platform", "list", env=env)
    assert SUITE_KEY in listed.stdout and not [s for s in (SUITE_SECRET, CB_TOKEN, AES_KEY) if s in listed.stdout]


# -- durability, removal, what operators see ------------------------------------------------
def test_the_ticket_is_sealed_in_sql_and_the_corp_row_holds_no_code(running: Running) -> None:
    running.authorize()
    db = running.container().callbacks.tickets._db
    [(ticket,)], _ = db.execute("SELECT ticket FROM pushed_ticket")
    assert ticket.startswith("fernet:") and running.fake.current_ticket(SUITE_KEY) not in ticket
    [(info,)], _ = db.execute("SELECT info FROM account_grant")
    codes = [d.message["AuthCode"] for d in running.fake.deliveries if "AuthCode" in d.message]
    assert codes and not [c for c in codes if c in info]


def test_removing_the_suite_stops_serving_its_corps_and_adding_it_back_serves_them_again(running: Running) -> None:
    fake = running.fake
    running.authorize()
    token = envelope(running.get(f"/token/dingtalk_corp/{CORP_APPID}"))["data"]
    env = clean_env(**running.settings)
    removed = run_cli("platform", "remove", "dingtalk_suite", SUITE_KEY, env=env)
    assert removed.returncode == 0, removed.stderr
    # A worker's memory lets go within local_cache_ttl (5 s), as for every removed credential.
    deadline = time.monotonic() + 6
    while True:
        answers = [running.get(f"/token/dingtalk_corp/{CORP_APPID}") for _ in range(3)]
        if {a.status_code for a in answers} == {404}:
            break
        assert time.monotonic() < deadline, [a.text for a in answers]
        time.sleep(0.1)
    assert all(token not in a.text for a in answers)
    added = run_cli("platform", "add", "dingtalk_suite", SUITE_KEY, "--secret", SUITE_SECRET, "--callback-token",
                    CB_TOKEN, "--aes-key", AES_KEY, env=env)
    assert added.returncode == 0, added.stderr
    # The corp and the ticket were kept: served again with no new push.
    again = running.get(f"/token/dingtalk_corp/{CORP_APPID}")
    assert again.status_code == 200 and fake.is_valid(envelope(again)["data"])


def test_the_status_page_and_metrics_name_corps_and_no_secret(running: Running) -> None:
    running.authorize()
    assert running.get(f"/token/dingtalk_corp/{CORP_APPID}").status_code == 200
    assert running.get(f"/token/dingtalk_suite/{SUITE_KEY}").status_code == 200
    page = running.get("/", headers={"Accept": "text/html"})
    metrics = running.get("/metrics")
    assert page.status_code == 200 and metrics.status_code == 200
    assert CORP_APPID in page.text and "dingtalk_corp" in metrics.text and "dingtalk_suite" in metrics.text
    text = page.text + metrics.text
    assert not [s[:6] for s in running.secrets() if s in text]
    running.assert_no_secret_in_log()


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgres"])
def test_a_refused_ticket_is_retired_in_every_sql_store_and_a_newer_push_replaces_it(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    app = create_app(overrides={**storage_overrides(kind, request, tmp_path), "is_enable_schedule": False,
                                "auth_required": False})
    tickets = app.extensions["pighand"].callbacks.tickets
    pushed = PushedTicket("dingtalk_suite", SUITE_KEY, "ticket-one", 1700000000.123, 1700043200.123, 1700000001.0)
    assert tickets.offer(pushed)
    assert tickets.retire("dingtalk_suite", SUITE_KEY, pushed.created_at, 1700000100.0)
    stored = tickets.latest("dingtalk_suite", SUITE_KEY)
    assert stored is not None and stored.value == "ticket-one" and not stored.valid(1700000100.0)
    assert not tickets.retire("dingtalk_suite", SUITE_KEY, pushed.created_at, 1700000100.0)  # once
    tickets.offer(pushed)  # delivered again: still retired
    again = tickets.latest("dingtalk_suite", SUITE_KEY)
    assert again is not None and not again.valid(1700000100.0)
    newer = PushedTicket("dingtalk_suite", SUITE_KEY, "ticket-two", 1700001200.5, 1700044400.5, 1700001201.0)
    assert tickets.offer(newer)
    # A worker that saw the old one refused does not retire the newer one.
    assert not tickets.retire("dingtalk_suite", SUITE_KEY, pushed.created_at, 1700001300.0)
    latest = tickets.latest("dingtalk_suite", SUITE_KEY)
    assert latest is not None and latest.value == "ticket-two" and latest.valid(1700001300.0)
