"""WeCom third-party suites (wecom_suite), the corps that install them
(wecom_corp) and the provider token (wecom_provider), against the fake WeCom
over loopback HTTP. The fake pushes real encrypted instructions (wechatpy's
enterprise crypto) to the shipped server's callback URL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from pighand_token.app import create_app
from pighand_token.core.auth import hash_key, new_key
from pighand_token.core.domain import Client, Credential, TokenKey
from pighand_token.providers.third_party import AppSecrets
from tests.conftest import clean_env, run_cli
from tests.e2e.test_workers import envelope, seed
from tests.fakes.wecom_suite import (
    CORP,
    CORP_TOKEN_PATH,
    PERMANENT_CODE_PATH,
    PRE_AUTH_CODE_PATH,
    PROVIDER,
    PROVIDER_TOKEN_PATH,
    SUITE,
    SUITE_TOKEN_PATH,
    FakeWeComSuite,
)
from tests.integration.isv_hub import Hub, sqlite_settings

SUITE_ID = "wwsuite0000000001"
SUITE_SECRET = "suite-S3cr3t-0001-xyz"
CB_TOKEN = "cbT0kenSuite1"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_ID = "wwsuite0000000002"
OTHER_SECRET = "suite-S3cr3t-0002-xyz"
OTHER_TOKEN = "cbT0kenSuite2"
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
PROVIDER_CORPID = "wwprovider0000001"
PROVIDER_SECRET = "provider-S3cr3t-xyz"
CORPID = "wwcorp0000000001"
CORP_APPID = f"{SUITE_ID}:{CORPID}"
CORP_OWNER = f"{SUITE_ID}:{CORPID}"  # the fake's owner of the corp's tokens
CALLBACK = f"/callback/wecom_suite/{SUITE_ID}"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><ToUserName>&lol3;</ToUserName><Encrypt>&lol3;</Encrypt></xml>"""


def suite_secret(secret: str = SUITE_SECRET, token: str = CB_TOKEN, key: str = AES_KEY) -> str:
    return AppSecrets(secret, token, key).encode()


@dataclass
class Running(Hub[FakeWeComSuite]):
    api_base = "wecom_api_base"

    def install(self) -> None:
        """A ticket, then a corp installs the suite (create_auth pushed)."""
        assert self.fake.push_ticket(SUITE_ID).ok
        delivery = self.fake.authorize(SUITE_ID, CORPID, corp_name="Acme")
        assert delivery.ok, (delivery.status, delivery.answer, self.server.log()[-3000:])

    def secrets(self) -> list[str]:
        """Everything that must never leave the service."""
        values = [SUITE_SECRET, OTHER_SECRET, PROVIDER_SECRET, CB_TOKEN, AES_KEY, *self.fake.issued()]
        for suite_id in (SUITE_ID, OTHER_ID):
            code = self.fake.permanent_code(suite_id, CORPID)
            if code:
                values.append(code)
        values += [d.message["AuthCode"] for d in self.fake.deliveries if "AuthCode" in d.message]
        return values


@pytest.fixture
def fake() -> Iterator[FakeWeComSuite]:
    with FakeWeComSuite() as platform:
        platform.add_suite(SUITE_ID, SUITE_SECRET, token=CB_TOKEN, encoding_aes_key=AES_KEY)
        platform.add_suite(OTHER_ID, OTHER_SECRET, token=OTHER_TOKEN, encoding_aes_key=OTHER_AES_KEY)
        platform.set_provider(PROVIDER_CORPID, PROVIDER_SECRET)
        yield platform


@pytest.fixture
def running(fake: FakeWeComSuite, tmp_path: Path) -> Iterator[Running]:
    settings = sqlite_settings(tmp_path, ("wecom_suite", SUITE_ID, suite_secret()),
                               ("wecom_provider", PROVIDER_CORPID, PROVIDER_SECRET))
    with Running.serve(fake, tmp_path, settings, {SUITE_ID: CALLBACK}, log_level="debug") as running:
        yield running


# -- the callback URL ----------------------------------------------------------------
def test_url_verification_answers_the_decrypted_echostr_as_text(running: Running) -> None:
    # The fake encrypts with wechatpy for the provider's corpid, which the
    # service was never told: the suite's Token and key are what count.
    check = running.fake.verify_url(SUITE_ID)
    assert check.ok, (check.status, check.answer)
    assert check.answer == check.echostr and check.status == 200
    assert running.fake.verify_url(SUITE_ID, receive_id=SUITE_ID).ok
    assert running.fake.verify_url(SUITE_ID, receive_id="").ok  # suites of individual developers

    forged = running.fake.verify_url(SUITE_ID, bad_signature=True)
    assert forged.status == 401 and check.echostr not in forged.answer
    assert json.loads(forged.answer)["code"] == 401


# -- suite tickets and the suite token --------------------------------------------------
def test_without_a_ticket_the_suite_token_is_503_saying_wecom_pushes_every_10_minutes(running: Running) -> None:
    answer = running.get(f"/token/wecom_suite/{SUITE_ID}")
    assert answer.status_code == 503
    error = envelope(answer)["error"]
    assert "suite_ticket" in error and "every 10 minutes" in error and f"/callback/wecom_suite/{SUITE_ID}" in error
    assert int(answer.headers["Retry-After"]) > 0
    # Nothing to ask WeCom: no call at all.
    assert running.fake.count() == 0
    # A corp token needs the suite token: it waits for the ticket too (once installed).


def test_pushed_suite_ticket_makes_the_suite_token_and_an_older_redelivery_is_ignored(running: Running) -> None:
    fake = running.fake
    first = fake.push_ticket(SUITE_ID)
    assert first.ok and first.answer == "success"
    fake.advance(600)  # WeCom's next push, 10 minutes later
    second = fake.push_ticket(SUITE_ID)
    assert second.ok
    again = fake.redeliver(first)
    assert again.ok and again.answer == "success"

    stored = running.container().callbacks.tickets.latest("wecom_suite", SUITE_ID)
    assert stored is not None and stored.value == second.message["SuiteTicket"]
    answer = running.get(f"/token/wecom_suite/{SUITE_ID}")
    assert answer.status_code == 200, answer.text
    assert envelope(answer)["data"] == fake.current_token(SUITE, SUITE_ID)
    call = fake.last(SUITE_TOKEN_PATH)
    assert call is not None and call["suite_ticket"] == second.message["SuiteTicket"]
    running.assert_no_secret_in_log()


# -- installs -----------------------------------------------------------------------
def test_create_auth_serves_the_corp_token_it_came_with_and_a_redelivery_changes_nothing(running: Running) -> None:
    fake = running.fake
    running.install()
    answer = running.get(f"/token/wecom_corp/{CORP_APPID}")
    assert answer.status_code == 200, answer.text
    token = envelope(answer)["data"]
    assert token == fake.current_token(CORP, CORP_OWNER) and fake.is_valid(token)
    assert fake.count(PERMANENT_CODE_PATH) == 1
    assert fake.count(CORP_TOKEN_PATH) == 0  # installed as handed over

    grants = running.container().callbacks.grants
    grant = grants.get("wecom_corp", SUITE_ID, CORPID)
    assert grant is not None and grant.secret == fake.permanent_code(SUITE_ID, CORPID)
    info = json.loads(grant.info)
    assert info["auth_corp_info"]["corpid"] == CORPID and info["agent"][0]["agentid"] == 1000002
    assert info["event"] == "create_auth"

    create_auth = [d for d in fake.deliveries if d.info_type == "create_auth"][-1]
    again = fake.redeliver(create_auth)
    assert again.ok and again.answer == "success", again.answer
    assert fake.count(PERMANENT_CODE_PATH) == 1
    assert envelope(running.get(f"/token/wecom_corp/{CORP_APPID}"))["data"] == token
    assert fake.count(CORP_TOKEN_PATH) == 0

    # change_auth: acknowledged, nothing to exchange, the corp keeps its token.
    assert fake.change_auth(SUITE_ID, CORPID).ok
    assert grants.get("wecom_corp", SUITE_ID, CORPID) == grant
    running.assert_no_secret_in_log()


def test_reset_permanent_code_replaces_the_stored_code(running: Running) -> None:
    fake = running.fake
    running.install()
    old = fake.permanent_code(SUITE_ID, CORPID)
    delivery = fake.reset_permanent_code(SUITE_ID, CORPID)
    assert delivery.ok, delivery.answer
    new = fake.permanent_code(SUITE_ID, CORPID)
    assert new and new != old
    grant = running.container().callbacks.grants.get("wecom_corp", SUITE_ID, CORPID)
    assert grant is not None and grant.secret == new
    # The next corp token is made with the new code (the old one is void:
    # WeCom would answer 40084).
    current = envelope(running.get(f"/token/wecom_corp/{CORP_APPID}"))["data"]
    answer = requests.put(running.url(f"/token/wecom_corp/{CORP_APPID}"), json={"stale_token": current},
                          timeout=15)
    assert answer.status_code == 200, answer.text
    call = fake.last(CORP_TOKEN_PATH)
    assert call is not None and call["status"] == 200 and call["errcode"] == 0
    assert call["body"]["permanent_code"] == new
    running.assert_no_secret_in_log()


def test_cancel_auth_forgets_the_corp_and_is_audited(running: Running) -> None:
    fake = running.fake
    running.install()
    assert running.get(f"/token/wecom_corp/{CORP_APPID}").status_code == 200
    assert fake.cancel_auth(SUITE_ID, CORPID).ok
    answer = running.get(f"/token/wecom_corp/{CORP_APPID}")
    assert answer.status_code == 404, answer.text
    assert "has not installed" in envelope(answer)["error"]
    container = running.container()
    assert container.callbacks.grants.get("wecom_corp", SUITE_ID, CORPID) is None
    actions = [(e.action, e.platform, e.appid) for e in container.audit.tail(20)]
    assert ("callback.create_auth", "wecom_suite", SUITE_ID) in actions
    assert ("callback.cancel_auth", "wecom_suite", SUITE_ID) in actions
    # A corp that never installed: 404 before any platform call.
    calls = fake.count()
    assert running.get(f"/token/wecom_corp/{SUITE_ID}:wwnobody000001").status_code == 404
    assert fake.count() == calls


def test_a_cancel_auth_delivered_again_after_the_corp_installed_anew_forgets_nothing(running: Running) -> None:
    fake = running.fake
    running.install()
    cancelled = fake.cancel_auth(SUITE_ID, CORPID)
    assert cancelled.ok
    fake.advance(2)  # TimeStamp has whole seconds
    assert fake.authorize(SUITE_ID, CORPID).ok
    token = envelope(running.get(f"/token/wecom_corp/{CORP_APPID}"))["data"]
    assert fake.redeliver(cancelled).ok  # acknowledged, and ignored: it predates the new install
    assert running.container().callbacks.grants.get("wecom_corp", SUITE_ID, CORPID) is not None
    answer = running.get(f"/token/wecom_corp/{CORP_APPID}")
    assert answer.status_code == 200 and envelope(answer)["data"] == token


def test_suite_token_refused_by_wecom_is_replaced_once(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(SUITE_ID).ok
    suite_token = envelope(running.get(f"/token/wecom_suite/{SUITE_ID}"))["data"]
    fake.invalidate(suite_token)  # WeCom killed it early: 40082 on the next call
    running.install()  # get_permanent_code with the dead token, then with a new one
    assert fake.count(SUITE_TOKEN_PATH) == 2
    assert [c["errcode"] for c in fake.find(PERMANENT_CODE_PATH)] == [40082, 0]
    new = envelope(running.get(f"/token/wecom_suite/{SUITE_ID}"))["data"]
    assert new != suite_token and fake.is_valid(new)


@pytest.mark.parametrize("errcode", [40084, 48004])
def test_a_void_permanent_code_says_the_corp_must_install_again(running: Running, errcode: int) -> None:
    fake = running.fake
    running.install()
    current = envelope(running.get(f"/token/wecom_corp/{CORP_APPID}"))["data"]
    fake.fail_with_errcode_next(1, errcode, "refused", path=CORP_TOKEN_PATH)
    answer = requests.put(running.url(f"/token/wecom_corp/{CORP_APPID}"), json={"stale_token": current},
                          timeout=15)
    assert answer.status_code == 502, answer.text
    error = envelope(answer)["error"]
    assert "must install suite" in error and str(errcode) in error
    assert fake.count(CORP_TOKEN_PATH) == 1  # not retried
    assert not [s for s in running.secrets() if s in answer.text]


# -- refused callbacks ------------------------------------------------------------------
def test_forged_tampered_and_misrouted_pushes_are_401_and_store_nothing(running: Running) -> None:
    fake = running.fake
    for delivery in (fake.push_ticket(SUITE_ID, bad_signature=True), fake.push_ticket(SUITE_ID, tamper=True),
                     fake.push_ticket(SUITE_ID, as_suite=OTHER_ID), fake.push_ticket(SUITE_ID, receive_id="wwother")):
        assert delivery.status == 401, (delivery.variant, delivery.status, delivery.answer)
        assert json.loads(delivery.answer)["code"] == 401
        assert not [s for s in running.secrets() if s in delivery.answer]
    assert running.container().callbacks.tickets.latest("wecom_suite", SUITE_ID) is None
    assert running.get(f"/token/wecom_suite/{SUITE_ID}").status_code == 503
    running.assert_no_secret_in_log()


def test_unknown_suite_is_404(running: Running) -> None:
    fake = running.fake
    fake.set_callback_url(OTHER_ID, running.url(f"/callback/wecom_suite/{OTHER_ID}"))
    delivery = fake.push_ticket(OTHER_ID)
    assert delivery.status == 404, delivery.answer
    assert OTHER_ID in json.loads(delivery.answer)["error"]
    assert fake.verify_url(OTHER_ID).status == 404
    # The suite that was added answers the same pushes.
    assert fake.verify_url(SUITE_ID).ok and fake.push_ticket(SUITE_ID).ok


def test_oversized_bomb_and_malformed_bodies_are_refused_and_store_nothing(running: Running) -> None:
    fake = running.fake
    good = fake.push_ticket(SUITE_ID, bad_signature=True)  # a real query string to send bodies with
    url = running.url(f"/callback/wecom_suite/{SUITE_ID}")
    big = requests.post(url, params=good.params, data=b"<xml>" + b"A" * (65 * 1024) + b"</xml>", timeout=15)
    assert big.status_code == 413
    for body in (BILLION_LAUGHS, b"<xml><Encrypt>abc</Encrypt>", b"not xml at all", b"<other/>",
                 b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>"):
        answer = requests.post(url, params=good.params, data=body, timeout=15)
        assert answer.status_code == 400, (body[:20], answer.text)
        assert envelope(answer)["code"] == 400
    missing = requests.post(url, data=good.body, timeout=15)  # no signature parameters
    assert missing.status_code == 400
    assert running.container().callbacks.tickets.latest("wecom_suite", SUITE_ID) is None


# -- the provider token, the install page, the scheduler, the CLI ------------------------------
def test_provider_token(running: Running) -> None:
    answer = running.get(f"/token/wecom_provider/{PROVIDER_CORPID}")
    assert answer.status_code == 200, answer.text
    assert envelope(answer)["data"] == running.fake.current_token(PROVIDER, PROVIDER_CORPID)
    assert running.fake.count(PROVIDER_TOKEN_PATH) == 1
    assert running.get(f"/token/wecom_provider/{PROVIDER_CORPID}").status_code == 200
    assert running.fake.count(PROVIDER_TOKEN_PATH) == 1


def test_install_page_url_carries_a_fresh_pre_auth_code(running: Running) -> None:
    assert running.fake.push_ticket(SUITE_ID).ok
    answer = running.get(f"/authorize/wecom_suite/{SUITE_ID}",
                         params={"redirect_uri": "https://isv.example.com/installed", "state": "s1"})
    assert answer.status_code == 200, answer.text
    url = urlsplit(envelope(answer)["data"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://open.work.weixin.qq.com/3rdapp/install"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["suite_id"] == SUITE_ID and query["redirect_uri"] == "https://isv.example.com/installed"
    assert query["state"] == "s1" and query["pre_auth_code"]
    assert running.fake.count(PRE_AUTH_CODE_PATH) == 1

    # The code the install page redirects with is exchanged like a push.
    code = running.fake.authorize(SUITE_ID, CORPID, push=False).message["AuthCode"]
    done = requests.post(running.url(f"/authorize/wecom_suite/{SUITE_ID}"), json={"auth_code": code}, timeout=15)
    assert done.status_code == 200 and envelope(done)["data"] == CORPID
    assert running.get(f"/token/wecom_corp/{CORP_APPID}").status_code == 200


def test_scheduler_refreshes_corp_tokens(running: Running) -> None:
    fake = running.fake
    running.install()
    container = running.container()
    container.service.forget("wecom_corp", CORP_APPID)
    report = container.service.refresh_due()
    assert TokenKey("wecom_corp", CORP_APPID) in report.refreshed
    assert TokenKey("wecom_suite", SUITE_ID) in report.fresh
    assert not report.failed
    assert fake.count(CORP_TOKEN_PATH) == 1
    served = envelope(running.get(f"/token/wecom_corp/{CORP_APPID}"))["data"]
    assert fake.is_valid(served)


def test_cli_adds_a_suite_and_lists_its_corps_without_tokens_or_codes(fake: FakeWeComSuite, tmp_path: Path) -> None:
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    env = clean_env(wecom_api_base=fake.base_url, is_enable_schedule=False, **settings)
    added = run_cli("platform", "add", "wecom_suite", SUITE_ID, "--secret", SUITE_SECRET, "--callback-token",
                    CB_TOKEN, "--encoding-aes-key", AES_KEY, env=env)
    assert added.returncode == 0, added.stderr
    bad = run_cli("platform", "add", "wecom_suite", OTHER_ID, "--secret", OTHER_SECRET, "--callback-token",
                  OTHER_TOKEN, "--encoding-aes-key", "short", env=env)
    assert bad.returncode != 0 and "43 characters" in bad.stderr + bad.stdout
    with Running.serve(fake, tmp_path, settings, {SUITE_ID: CALLBACK}) as running:
        running.install()
        assert running.get(f"/token/wecom_corp/{CORP_APPID}").status_code == 200
        listing = run_cli("wecom", "corps", SUITE_ID, env=env)
        assert listing.returncode == 0, listing.stderr
        assert CORPID in listing.stdout and "valid" in listing.stdout and "1 corp(s)" in listing.stdout
        assert not [s for s in running.secrets() if s in listing.stdout + listing.stderr]
        page = run_cli("wecom", "authorize-url", SUITE_ID, "--redirect-uri", "https://isv.example.com/done",
                       "--state", "st", env=env)
        assert page.returncode == 0, page.stderr
        assert page.stdout.startswith(f"https://open.work.weixin.qq.com/3rdapp/install?suite_id={SUITE_ID}&")
        assert "state=st" in page.stdout and fake.count(PRE_AUTH_CODE_PATH) == 1
        running.assert_no_secret_in_log()


def test_wecom_corp_credentials_cannot_be_added_directly(running: Running) -> None:
    container = running.container()
    with pytest.raises(Exception, match="add the suite"):
        container.service.providers["wecom_corp"].check_credential(CORP_APPID, "x")
    container.credentials.add(Credential("wecom_provider", "wwprovider0000002", "wrong-secret"))
    answer = running.get("/token/wecom_provider/wwprovider0000002")
    assert answer.status_code == 502 and "40013" in envelope(answer)["error"]


# -- scopes ------------------------------------------------------------------------
def test_scopes_cover_corps_and_the_install_routes_need_the_suite(fake: FakeWeComSuite, tmp_path: Path) -> None:
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    seed(settings, ("wecom_suite", SUITE_ID, suite_secret()))
    app = create_app(overrides={**settings, "is_enable_schedule": False, "auth_required": False})
    scopes = (f"wecom_corp:{CORP_APPID}", "wecom_corp:*", "*", f"wecom_suite:{SUITE_ID}",
              f"wecom_corp:{SUITE_ID}:wwsomeoneelse0001")
    keys = {}
    for scope in scopes:
        key = new_key()
        app.extensions["pighand"].clients.repo.add(Client(scope.replace(":", "-").replace("*", "all"),
                                                          hash_key(key), (scope,), time.time()))
        keys[scope] = {"X-API-Key": key}
    with Running.serve(fake, tmp_path, settings, {SUITE_ID: CALLBACK}, auth_required=True) as running:
        running.install()  # the callback takes no key
        expected = {f"wecom_corp:{CORP_APPID}": (200, 403), "wecom_corp:*": (200, 403), "*": (200, 200),
                    f"wecom_suite:{SUITE_ID}": (403, 200), f"wecom_corp:{SUITE_ID}:wwsomeoneelse0001": (403, 403)}
        for scope, (token_status, install_status) in expected.items():
            got = running.get(f"/token/wecom_corp/{CORP_APPID}", headers=keys[scope]).status_code
            page = running.get(f"/authorize/wecom_suite/{SUITE_ID}", headers=keys[scope],
                               params={"redirect_uri": "https://isv.example/back"}).status_code
            code = requests.post(running.url(f"/authorize/wecom_suite/{SUITE_ID}"), headers=keys[scope],
                                 json={"auth_code": "not-a-code"}, timeout=15).status_code
            assert (got, page) == (token_status, install_status), scope
            assert (code == 403) == (install_status == 403), (scope, code)
        assert running.get(f"/token/wecom_corp/{CORP_APPID}").status_code == 401
