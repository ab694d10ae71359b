"""Feishu / Lark store apps (feishu_store, lark_store) and their tenants
(feishu_tenant, lark_tenant) under the shipped server, against the fake
Feishu over loopback HTTP. The fake pushes events encrypted and signed as
Feishu does; the official lark-oapi SDK opens the very same requests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lark_oapi
import pytest
import requests
from lark_oapi.api.contact.v3 import ListUserRequest
from lark_oapi.core.model import RawRequest
from lark_oapi.core.token.manager import TokenManager
from lark_oapi.event.custom import CustomizedEvent

from pighand_token.app import create_app
from pighand_token.providers.feishu_store import StoreSecrets
from tests.conftest import clean_env, run_cli
from tests.e2e.test_workers import envelope
from tests.fakes.feishu import APP, TENANT
from tests.fakes.feishu_store import (
    APP_TOKEN_PATH,
    RESEND_PATH,
    TENANT_TOKEN_PATH,
    Delivery,
    FakeFeishuStore,
)
from tests.integration.isv_hub import Hub, sqlite_settings

APP_ID = "cli_store0000000001"
SECRET = "store-S3cr3t-0001-xyz"
ENCRYPT_KEY = "encrypt-K3y-0001"
VTOKEN = "verif-T0ken-0001"
PLAIN_APP = "cli_store0000000002"  # no Encrypt Key: plain events
PLAIN_SECRET = "store-S3cr3t-0002-xyz"
PLAIN_VTOKEN = "verif-T0ken-0002"
LARK_APP = "cli_lark00000000001"
LARK_SECRET = "lark-S3cr3t-0001-xyz"
TENANT_KEY = "2ed263bf32cf1651"
OTHER_TENANT = "736588c9260f175d"
TENANT_APPID = f"{APP_ID}:{TENANT_KEY}"


def store_secret(secret: str = SECRET, encrypt_key: str = ENCRYPT_KEY, token: str = VTOKEN) -> str:
    return StoreSecrets(secret, encrypt_key, token).encode()


@dataclass
class Running(Hub[FakeFeishuStore]):
    api_base = "feishu_api_base"

    def tickets(self, app_id: str = APP_ID) -> Any:
        return self.container().callbacks.tickets.latest("feishu_store", app_id)

    def tenants(self, app_id: str = APP_ID) -> list[str]:
        return sorted(g.account for g in self.container().callbacks.grants.list("feishu_tenant", app_id))

    def secrets(self) -> list[str]:
        values = [SECRET, PLAIN_SECRET, LARK_SECRET, ENCRYPT_KEY, VTOKEN, PLAIN_VTOKEN, *self.fake.issued()]
        for app in self.fake.store_apps.values():
            values += [value for value, _ in app.tickets]
        return values


@pytest.fixture
def fake() -> Iterator[FakeFeishuStore]:
    with FakeFeishuStore() as platform:
        platform.add_store_app(APP_ID, SECRET, encrypt_key=ENCRYPT_KEY, verification_token=VTOKEN)
        platform.add_store_app(PLAIN_APP, PLAIN_SECRET, encrypt_key="", verification_token=PLAIN_VTOKEN)
        platform.add_store_app(LARK_APP, LARK_SECRET, encrypt_key=ENCRYPT_KEY, verification_token=VTOKEN)
        yield platform


@pytest.fixture
def running(fake: FakeFeishuStore, tmp_path: Path) -> Iterator[Running]:
    settings = sqlite_settings(tmp_path, ("feishu_store", APP_ID, store_secret()),
                               ("feishu_store", PLAIN_APP, store_secret(PLAIN_SECRET, "", PLAIN_VTOKEN)),
                               ("lark_store", LARK_APP, store_secret(LARK_SECRET)))
    callbacks = {APP_ID: f"/callback/feishu_store/{APP_ID}", PLAIN_APP: f"/callback/feishu_store/{PLAIN_APP}",
                 LARK_APP: f"/callback/lark_store/{LARK_APP}"}
    # Lark is another host serving the same paths: here the same fake.
    with Running.serve(fake, tmp_path, settings, callbacks, lark_api_base=fake.base_url,
                       log_level="debug") as running:
        yield running


def sdk_handler(encrypt_key: str, token: str, seen: list[CustomizedEvent]) -> Any:
    """lark-oapi's own event dispatcher for one app."""
    return (lark_oapi.EventDispatcherHandler.builder(encrypt_key, token)
            .register_p1_customized_event("app_ticket", seen.append)
            .register_p1_customized_event("app_open", seen.append)
            .register_p2_customized_event("application.application.visibility.added_v6", seen.append)
            .build())


def sdk_request(delivery: Delivery) -> RawRequest:
    request = RawRequest()
    request.uri = "/callback"
    request.body = delivery.body
    request.headers = dict(delivery.headers)
    return request


# -- the URL check ----------------------------------------------------------------
@pytest.mark.parametrize("app_id", [APP_ID, PLAIN_APP])
def test_url_verification_answers_the_challenge_as_json_like_lark_oapi(running: Running, app_id: str) -> None:
    challenge, delivery = running.fake.verify_url(app_id)
    assert delivery.status == 200, delivery.answer
    assert json.loads(delivery.answer) == {"challenge": challenge}
    app = running.fake.store_apps[app_id]
    sdk = sdk_handler(app.encrypt_key, app.verification_token, []).do(sdk_request(delivery))
    assert sdk.status_code == 200 and json.loads(sdk.content) == json.loads(delivery.answer)

    _, forged = running.fake.verify_url(app_id, wrong_token=True)
    assert forged.status == 401 and challenge not in forged.answer
    assert json.loads(forged.answer)["code"] == 401


# -- tickets and the app token -------------------------------------------------------
def test_without_a_ticket_the_app_token_is_503_and_feishu_is_asked_to_resend_once_a_minute(
        running: Running) -> None:
    fake = running.fake
    fake.resend_pushes = False  # the pushes get lost
    answers = [running.get(f"/token/feishu_store/{APP_ID}") for _ in range(3)]
    assert [a.status_code for a in answers] == [503] * 3
    error = envelope(answers[0])["error"]
    assert "app_ticket" in error and f"/callback/feishu_store/{APP_ID}" in error and "asked" in error
    assert int(answers[0].headers["Retry-After"]) > 0
    assert fake.count(RESEND_PATH) == 1 and fake.count(APP_TOKEN_PATH) == 0
    call = fake.last(RESEND_PATH)
    assert call is not None and call["body"] == {"app_id": APP_ID, "app_secret": SECRET}
    # A resend that arrives: the next GET has its token.
    fake.resend_pushes = True
    assert fake.push_ticket(APP_ID).ok
    answer = running.get(f"/token/feishu_store/{APP_ID}")
    assert answer.status_code == 200, answer.text
    assert envelope(answer)["data"] == fake.current_token(APP, APP_ID)
    running.assert_no_secret_in_log()


def test_resend_pushes_a_ticket_that_the_next_request_uses(running: Running) -> None:
    fake = running.fake
    first = running.get(f"/token/feishu_store/{APP_ID}")
    assert first.status_code == 503
    deadline = time.monotonic() + 10
    while running.tickets() is None:
        assert time.monotonic() < deadline, running.server.log()[-3000:]
        time.sleep(0.05)
    answer = running.get(f"/token/feishu_store/{APP_ID}")
    assert answer.status_code == 200, answer.text
    assert fake.count(RESEND_PATH) == 1 and fake.count(APP_TOKEN_PATH) == 1


def test_pushed_ticket_is_accepted_by_lark_oapi_and_by_the_service_and_an_older_one_never_wins(
        running: Running) -> None:
    fake = running.fake
    first = fake.push_ticket(APP_ID)
    assert first.ok and json.loads(first.answer) == {"msg": "success"}
    seen: list[CustomizedEvent] = []
    sdk = sdk_handler(ENCRYPT_KEY, VTOKEN, seen).do(sdk_request(first))
    assert sdk.status_code == 200 and json.loads(sdk.content) == json.loads(first.answer)
    assert seen and seen[0].event["app_ticket"] == first.event["event"]["app_ticket"]

    fake.advance(3600)  # the next hourly push
    second = fake.push_ticket(APP_ID)
    assert second.ok
    assert fake.redeliver(first).ok  # a late redelivery of the first: acknowledged, ignored
    stored = running.tickets()
    assert stored is not None and stored.value == second.event["event"]["app_ticket"]
    assert stored.expires_at == pytest.approx(float(second.event["ts"]) + 12 * 3600)

    answer = running.get(f"/token/feishu_store/{APP_ID}")
    assert answer.status_code == 200, answer.text
    call = fake.last(APP_TOKEN_PATH)
    assert call is not None and call["body"]["app_ticket"] == second.event["event"]["app_ticket"]
    running.assert_no_secret_in_log()


def test_a_refused_ticket_is_retired_a_resend_is_asked_and_the_new_push_ends_the_wait(running: Running) -> None:
    fake = running.fake
    fake.ticket_life_s = 60
    assert fake.push_ticket(APP_ID).ok
    fake.advance(120)  # Feishu no longer takes it; the service still keeps it 12 h
    answer = running.get(f"/token/feishu_store/{APP_ID}")
    assert answer.status_code == 503, answer.text
    assert "10012" in envelope(answer)["error"] and "app_ticket push" in envelope(answer)["error"]
    last = fake.last(APP_TOKEN_PATH)
    assert last is not None and last["errcode"] == 10012
    deadline = time.monotonic() + 10  # the resend's push arrives
    while fake.count(RESEND_PATH) < 1 or not any(d.kind == "app_ticket" and d.ok for d in fake.deliveries[1:]):
        assert time.monotonic() < deadline, running.server.log()[-3000:]
        time.sleep(0.05)
    # The push ends the wait at once: no rest outlasts it.
    answer = running.get(f"/token/feishu_store/{APP_ID}")
    assert answer.status_code == 200, answer.text
    assert fake.count(APP_TOKEN_PATH) == 2 and fake.count(RESEND_PATH) == 1


# -- tenants ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", [1, 2])
def test_an_install_event_records_the_tenant_and_its_token_is_made_from_the_app_token(
        running: Running, version: int) -> None:
    fake = running.fake
    assert fake.push_ticket(APP_ID).ok
    install = fake.install(APP_ID, TENANT_KEY, version=version)
    assert install.ok, install.answer
    seen: list[CustomizedEvent] = []
    assert sdk_handler(ENCRYPT_KEY, VTOKEN, seen).do(sdk_request(install)).status_code == 200 and seen
    assert running.tenants() == [TENANT_KEY]
    assert fake.redeliver(install).ok  # idempotent
    assert running.tenants() == [TENANT_KEY]

    answer = running.get(f"/token/feishu_tenant/{TENANT_APPID}")
    assert answer.status_code == 200, answer.text
    token = envelope(answer)["data"]
    assert token == fake.current_token(TENANT, TENANT_APPID) and fake.is_valid(token, TENANT)
    call = fake.last(TENANT_TOKEN_PATH)
    assert call is not None and call["body"] == {"app_access_token": fake.current_token(APP, APP_ID),
                                                 "tenant_key": TENANT_KEY}
    assert fake.count(APP_TOKEN_PATH) == 1
    running.assert_no_secret_in_log()


def test_a_tenant_first_seen_in_a_token_request_or_a_user_event_is_recorded(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(APP_ID).ok
    with fake.lock:
        fake.store_apps[APP_ID].tenants.update({TENANT_KEY, OTHER_TENANT})  # installed, event lost
    answer = running.get(f"/token/feishu_tenant/{TENANT_APPID}")
    assert answer.status_code == 200, answer.text
    assert running.tenants() == [TENANT_KEY]
    message = fake.user_message(APP_ID, OTHER_TENANT)
    assert message.ok, message.answer
    assert running.tenants() == sorted([TENANT_KEY, OTHER_TENANT])
    # Further events of a known tenant write nothing.
    before = running.container().callbacks.grants.get("feishu_tenant", APP_ID, OTHER_TENANT)
    assert fake.user_message(APP_ID, OTHER_TENANT).ok
    assert running.container().callbacks.grants.get("feishu_tenant", APP_ID, OTHER_TENANT) == before


def test_unknown_app_is_404_and_a_tenant_feishu_refuses_is_an_error_not_recorded(running: Running) -> None:
    assert running.fake.push_ticket(APP_ID).ok
    assert running.get("/token/feishu_tenant/cli_nope00000000:abc").status_code == 404
    answer = requests.post(f"{running.server.base_url}/callback/feishu_store/cli_nope00000000", json={}, timeout=5)
    assert answer.status_code == 404
    refused = running.get(f"/token/feishu_tenant/{APP_ID}:neverinstalled")
    assert refused.status_code == 502, refused.text
    assert running.tenants() == []
    assert running.get(f"/token/feishu_tenant/{APP_ID}").status_code == 400  # no tenant_key


def test_app_uninstalled_forgets_the_tenant_and_its_token(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(APP_ID).ok
    install = fake.install(APP_ID, TENANT_KEY)
    assert install.ok
    assert running.get(f"/token/feishu_tenant/{TENANT_APPID}").status_code == 200
    fake.advance(10)
    assert fake.uninstall(APP_ID, TENANT_KEY).ok
    assert running.tenants() == []
    # Its token is gone everywhere; asking again calls Feishu, which refuses
    # the tenant, and nothing is recorded.
    answer = running.get(f"/token/feishu_tenant/{TENANT_APPID}")
    assert answer.status_code == 502, answer.text
    assert running.tenants() == []


def test_plain_events_without_an_encrypt_key_need_the_verification_token(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(PLAIN_APP).ok
    assert running.tickets(PLAIN_APP) is not None
    forged = fake.install(PLAIN_APP, TENANT_KEY, wrong_token=True)
    assert forged.status == 401
    assert running.tenants(PLAIN_APP) == []
    assert fake.install(PLAIN_APP, TENANT_KEY, version=2).ok
    assert running.tenants(PLAIN_APP) == [TENANT_KEY]
    assert fake.user_message(PLAIN_APP, OTHER_TENANT, no_token=True).status == 401
    assert running.tenants(PLAIN_APP) == [TENANT_KEY]


def test_a_signed_event_without_a_verification_token_is_accepted_as_lark_oapi_does(running: Running) -> None:
    delivery = running.fake.install(APP_ID, TENANT_KEY, version=2, no_token=True)
    assert delivery.ok, delivery.answer
    seen: list[CustomizedEvent] = []
    assert sdk_handler(ENCRYPT_KEY, VTOKEN, seen).do(sdk_request(delivery)).status_code == 200 and seen
    assert running.tenants() == [TENANT_KEY]


# -- refusals: nothing stored ---------------------------------------------------------------
def test_bad_signature_wrong_token_replay_huge_and_malformed_bodies_store_nothing(running: Running) -> None:
    fake = running.fake
    url = f"{running.server.base_url}/callback/feishu_store/{APP_ID}"
    bad = fake.push_ticket(APP_ID, bad_signature=True)
    assert bad.status == 401 and json.loads(bad.answer)["code"] == 401
    wrong = fake.install(APP_ID, TENANT_KEY, wrong_token=True)
    assert wrong.status == 401
    replay = fake.push_ticket(APP_ID, sent_at=time.time() - 600)  # signed 10 minutes ago
    assert replay.status == 401 and "replay" in json.loads(replay.answer)["error"]
    huge = requests.post(url, data=json.dumps({"encrypt": "A" * 70_000}), timeout=5,
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 413
    malformed = requests.post(url, data=b"{not json", timeout=5, headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["code"] == 400
    plain_to_sealed = requests.post(url, json={"type": "event_callback", "token": VTOKEN, "event": {}}, timeout=5)
    assert plain_to_sealed.status_code == 401
    assert running.tickets() is None and running.tenants() == []
    # The SDK refuses the forged one too.
    assert sdk_handler(ENCRYPT_KEY, VTOKEN, []).do(sdk_request(bad)).status_code == 500
    # Unknown events are acknowledged.
    other = fake.push_v2(APP_ID, "contact.user.created_v3", "", {"object": {}})
    assert other.ok
    running.assert_no_secret_in_log()


def test_cli_lists_tenants_never_their_tokens(running: Running, tmp_path: Path) -> None:
    fake = running.fake
    assert fake.push_ticket(APP_ID).ok and fake.install(APP_ID, TENANT_KEY).ok
    token = envelope(running.get(f"/token/feishu_tenant/{TENANT_APPID}"))["data"]
    env = clean_env(**running.settings, feishu_api_base=fake.base_url, is_enable_schedule=False)
    listing = run_cli("feishu", "tenants", APP_ID, env=env)
    assert listing.returncode == 0, listing.stderr
    assert TENANT_KEY in listing.stdout and "1 tenant(s)" in listing.stdout and "valid" in listing.stdout
    assert token not in listing.stdout and SECRET not in listing.stdout
    missing = run_cli("feishu", "tenants", "cli_nope00000000", env=env)
    assert missing.returncode != 0 and "no feishu_store credential" in missing.stderr


def test_lark_oapi_reads_the_tenant_token_we_serve_and_gets_the_same_one_itself(running: Running) -> None:
    fake = running.fake
    assert fake.push_ticket(APP_ID).ok and fake.install(APP_ID, TENANT_KEY).ok
    served = envelope(running.get(f"/token/feishu_tenant/{TENANT_APPID}"))["data"]
    # The SDK's own ISV token path against the same platform: while 30
    # minutes remain, Feishu hands back the token the service holds.
    client = (lark_oapi.Client.builder().app_id(APP_ID).app_secret(SECRET).app_type(lark_oapi.AppType.ISV)
              .domain(fake.base_url).build())
    ticket = running.tickets()
    assert ticket is not None
    assert TokenManager.get_isv_tenant_token(client._config, TENANT_KEY, ticket.value) == served
    # And a business call made by the SDK with the served token succeeds.
    caller = lark_oapi.Client.builder().enable_set_token(True).domain(fake.base_url).build()
    listed = caller.contact.v3.user.list(ListUserRequest.builder().build(),
                                         lark_oapi.RequestOption.builder().tenant_access_token(served).build())
    assert listed.success(), (listed.code, listed.msg)


def test_lark_store_apps_are_their_own_platform_with_their_own_tenants(running: Running, tmp_path: Path) -> None:
    fake = running.fake
    assert fake.push_ticket(LARK_APP).ok and fake.install(LARK_APP, TENANT_KEY, version=2).ok
    answer = running.get(f"/token/lark_tenant/{LARK_APP}:{TENANT_KEY}")
    assert answer.status_code == 200, answer.text
    assert envelope(answer)["data"] == fake.current_token(TENANT, f"{LARK_APP}:{TENANT_KEY}")
    assert envelope(running.get(f"/token/lark_store/{LARK_APP}"))["data"] == fake.current_token(APP, LARK_APP)
    # Not a Feishu app: its tenants are not Feishu's.
    assert running.get(f"/token/feishu_tenant/{LARK_APP}:{TENANT_KEY}").status_code == 404
    grants = running.container().callbacks.grants
    assert [g.account for g in grants.list("lark_tenant", LARK_APP)] == [TENANT_KEY]
    assert grants.list("feishu_tenant", LARK_APP) == []
    env = clean_env(**running.settings, lark_api_base=fake.base_url, is_enable_schedule=False)
    listing = run_cli("feishu", "tenants", LARK_APP, env=env)
    assert listing.returncode == 0 and TENANT_KEY in listing.stdout, listing.stderr
    forced = run_cli("feishu", "tenants", "--lark", LARK_APP, env=env)
    assert forced.returncode == 0 and TENANT_KEY in forced.stdout and "1 tenant(s)" in forced.stdout


def test_platform_add_takes_an_empty_encrypt_key_and_keeps_all_secrets_out_of_listings(tmp_path: Path) -> None:
    env = clean_env(sqlite_path=str(tmp_path / "cli.sqlite3"), is_enable_schedule=False)
    added = run_cli("platform", "add", "feishu_store", "cli_cli0000000001", "--secret", SECRET, "--encrypt-key", "",
                    "--verification-token", VTOKEN, env=env)
    assert added.returncode == 0, added.stderr
    wrong = run_cli("platform", "add", "feishu_store", "cli_cli0000000002", "--secret", SECRET,
                    "--callback-token", "x", "--verification-token", VTOKEN, env=env)
    assert wrong.returncode != 0 and "--encrypt-key" in wrong.stderr
    tenant = run_cli("platform", "add", "feishu_tenant", "cli_cli0000000001:abc", "--secret", "x", env=env)
    assert tenant.returncode != 0 and "feishu_store" in tenant.stderr
    listing = run_cli("platform", "list", env=env)
    assert "cli_cli0000000001" in listing.stdout and SECRET not in listing.stdout and VTOKEN not in listing.stdout
    app = create_app(overrides={"sqlite_path": str(tmp_path / "cli.sqlite3"), "is_enable_schedule": False})
    stored = app.extensions["pighand"].credentials.get("feishu_store", "cli_cli0000000001")
    assert StoreSecrets.parse(stored.secret, "feishu_store") == StoreSecrets(SECRET, "", VTOKEN)
