"""Alipay merchant grants end to end in one process (plus the CLI as its own
process): real SQLite / MariaDB / Redis, the fake gateway over HTTP checking
RSA2 signatures made with key pairs generated here."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from flask import Flask

from pighand_token.adapters.grants import SqlGrantStore
from pighand_token.adapters.sql import Database, MySQLParams
from pighand_token.app import create_app
from pighand_token.core.domain import Credential, Grant, TokenKey
from pighand_token.core.errors import BadRequest
from pighand_token.providers.alipay import AlipayProvider, top_level_spans
from tests.conftest import MYSQL, STORAGE_KINDS, clean_env, postgres_url, run_cli, storage_overrides
from tests.fakes.alipay import GATEWAY_PATH, FakeAlipay, make_key, private_pem, public_pem, signed_params

ISV = "2021000000000001"
MERCHANT = "2021000000000002"
MERCHANT_2 = "2021000000000003"
TOKEN_APPID = f"{ISV}:{MERCHANT}"


@dataclass(frozen=True)
class Keys:
    app: rsa.RSAPrivateKey  # the ISV app's key pair
    gateway: rsa.RSAPrivateKey  # the fake gateway's ("Alipay public key")
    other: rsa.RSAPrivateKey  # a key Alipay does not know

    def bundle(self, *, pkcs1: bool = False, app: rsa.RSAPrivateKey | None = None) -> str:
        return private_pem(app or self.app, pkcs1=pkcs1) + public_pem(self.gateway)

    def material(self) -> list[str]:
        """Every base64 line of every PEM the tests handle."""
        pems = [private_pem(k, pkcs1=p) for k in (self.app, self.other) for p in (False, True)]
        pems += [public_pem(k) for k in (self.app, self.gateway, self.other)]
        return [line for pem in pems for line in pem.splitlines() if not line.startswith("-----")]


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(make_key(), make_key(), make_key())


@pytest.fixture
def alipay(keys: Keys) -> Iterator[FakeAlipay]:
    with FakeAlipay(private_key=keys.gateway) as fake:
        fake.add_app(ISV, public_pem(keys.app))
        yield fake


def no_leak(text: str, alipay: FakeAlipay, keys: Keys) -> None:
    """No token, refresh token or key material in ``text``."""
    for value in alipay.issued_values():
        assert value not in text
    for line in keys.material():
        assert line not in text


@dataclass
class Service:
    app: Flask
    settings: dict[str, Any]

    @property
    def container(self) -> Any:
        return self.app.extensions["pighand"]

    @property
    def provider(self) -> AlipayProvider:
        provider = self.container.service.providers["alipay"]
        assert isinstance(provider, AlipayProvider)
        return provider

    def seed(self, secret: str, appid: str = ISV, *, update: bool = False) -> None:
        self.container.credentials.add(Credential("alipay", appid, secret), update=update)

    def grant(self, code: str) -> str:
        """``alipay grant`` in this process (its clock is the fake's)."""
        result = self.app.test_cli_runner().invoke(args=["alipay", "grant", ISV, "--code-file", "-"], input=code)
        assert result.exit_code == 0, result.output
        return str(result.output)

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """A flask command in its own process, on the same stores."""
        return run_cli(*args, env=clean_env(**self.settings), input=input)

    def get(self, appid: str = TOKEN_APPID) -> Any:
        return self.app.test_client().get(f"/token/alipay/{appid}")

    def put(self, appid: str = TOKEN_APPID, **body: Any) -> Any:
        return self.app.test_client().put(f"/token/alipay/{appid}", json=body or None)


def data(response: Any, status: int = 200) -> str:
    body = response.get_json()
    assert response.status_code == status, body
    assert body["code"] == status
    return str(body["data"] if status == 200 else body["error"])


@pytest.fixture
def make(tmp_path: Path, request: pytest.FixtureRequest, alipay: FakeAlipay) -> Any:
    """make(kind="sqlite", **settings) -> a Service; calls in one test share
    the stores (a second call is a second process on them)."""
    def make(kind: str = "sqlite", **extra: Any) -> Service:
        settings = {**storage_overrides(kind, request, tmp_path), "alipay_gateway": alipay.gateway_url,
                    "is_enable_schedule": False, "upstream_timeout": 2, "log_level": "debug",
                    "auth_required": False, **extra}
        # The service runs on the fake's clock, so tests can move time.
        return Service(create_app(overrides=settings, clock=alipay.now), settings)
    return make


def refreshes(alipay: FakeAlipay) -> list[dict[str, Any]]:
    return alipay.find(GATEWAY_PATH, grant_type="refresh_token")


# -- credentials -----------------------------------------------------------------
def _cert_pem(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alipay test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime(2024, 1, 1))
            .not_valid_after(datetime(2034, 1, 1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _bad_bundles(keys: Keys) -> dict[str, tuple[str, str]]:
    """name -> (secret, what the refusal must say)."""
    app_pem = private_pem(keys.app)
    gateway_pub = public_pem(keys.gateway)
    bare = "".join(line for line in app_pem.splitlines() if not line.startswith("-----"))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    ec_pub = ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    encrypted = keys.app.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pass")).decode()
    small = make_key(1024)
    return {
        "bare base64": (bare + "\n" + gateway_pub, "not in a PEM block"),
        "not a key at all": ("s3cr3t-not-a-key", "not in a PEM block"),
        "empty": ("", "found 0 private keys"),
        "EC private key": (ec_pem + gateway_pub, "EC key"),
        "EC public key": (app_pem + ec_pub, "EC key"),
        "1024-bit key": (private_pem(small) + gateway_pub, "1024 bits"),
        "public key missing": (app_pem, "Alipay public key is missing"),
        "private key missing": (gateway_pub, "found 0 private keys"),
        "encrypted private key": (encrypted + gateway_pub, "encrypted"),
        "own public key": (app_pem + public_pem(keys.app), "app's own public key"),
        "certificate": (app_pem + _cert_pem(keys.gateway), "certificate mode"),
        "damaged PEM": (app_pem.replace(app_pem.splitlines()[3], "A" * 64) + gateway_pub, "not a valid PEM"),
        "two private keys": (app_pem + private_pem(keys.other) + gateway_pub, "found 2 private keys"),
    }


def test_check_credential_refuses_anything_but_an_rsa2_key_bundle(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    provider = make().provider
    for name, (secret, reason) in _bad_bundles(keys).items():
        with pytest.raises(BadRequest) as caught:
            provider.check_credential(ISV, secret)
        assert reason in caught.value.message, name
        for line in secret.splitlines():
            if len(line) >= 16 and not line.startswith("-----"):
                assert line not in caught.value.message, name
        no_leak(caught.value.message, alipay, keys)
    with pytest.raises(BadRequest, match="ISV app_id alone"):
        provider.check_credential(TOKEN_APPID, keys.bundle())
    # Both private-key forms, either order, Windows line ends.
    provider.check_credential(ISV, keys.bundle())
    provider.check_credential(ISV, keys.bundle(pkcs1=True))
    provider.check_credential(ISV, public_pem(keys.gateway) + private_pem(keys.app))
    provider.check_credential(ISV, keys.bundle().replace("\n", "\r\n"))


def test_platform_add_cli_refuses_bad_bundles_and_stores_a_good_one(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    service = make()
    refused = service.cli("platform", "add", "alipay", ISV, "--secret-file", "-", input=private_pem(keys.app))
    assert refused.returncode != 0
    assert "Alipay public key is missing" in refused.stderr and "Traceback" not in refused.stderr
    no_leak(refused.stdout + refused.stderr, alipay, keys)
    with_colon = service.cli("platform", "add", "alipay", TOKEN_APPID, "--secret-file", "-", input=keys.bundle())
    assert with_colon.returncode != 0 and "alipay grant" in with_colon.stderr

    added = service.cli("platform", "add", "alipay", ISV, "--secret-file", "-", input=keys.bundle())
    assert added.returncode == 0, added.stderr
    listed = service.cli("platform", "list")
    assert ISV in listed.stdout
    no_leak(added.stdout + added.stderr + listed.stdout + listed.stderr, alipay, keys)
    assert service.container.credentials.get("alipay", ISV).secret.strip() == keys.bundle().strip()


# -- grant, serve, refresh --------------------------------------------------------
@pytest.mark.parametrize("kind", STORAGE_KINDS)
def test_grant_then_serve_then_refresh_rotates_the_pair(make: Any, keys: Keys, alipay: FakeAlipay, kind: str) -> None:
    service = make(kind)
    service.seed(keys.bundle())
    code = alipay.authorize(ISV, MERCHANT)
    granted = service.cli("alipay", "grant", ISV, input=code + "\n")  # the hidden prompt
    assert granted.returncode == 0, granted.stderr
    assert f"auth_app_id {MERCHANT}" in granted.stdout and f"token appid {TOKEN_APPID}" in granted.stdout
    no_leak(granted.stdout + granted.stderr, alipay, keys)
    assert code not in granted.stdout + granted.stderr
    first = alipay.current(ISV, MERCHANT)
    assert first is not None and alipay.count(GATEWAY_PATH) == 1

    # Served from the grant, then from storage: no call beyond the grant.
    assert {data(service.get()) for _ in range(5)} == {first.app_auth_token}
    assert data(make(kind).get()) == first.app_auth_token  # another process, same stores
    assert alipay.count(GATEWAY_PATH) == 1

    second_token = data(service.put())
    assert second_token != first.app_auth_token and alipay.is_valid(second_token)
    assert not alipay.is_valid(first.app_auth_token)
    [call] = refreshes(alipay)
    assert call["refresh_token"] == first.app_refresh_token and call["code"] == "10000"
    assert data(service.get()) == second_token

    # The next refresh sends the refresh token the last one returned...
    third_token = data(service.put(stale_token=second_token))
    assert third_token not in (first.app_auth_token, second_token)
    calls = refreshes(alipay)
    assert len(calls) == 2 and calls[1]["refresh_token"] == calls[0]["issued_refresh"]
    stored = service.provider.grants.get(ISV, MERCHANT)
    assert stored is not None and stored.app_refresh_token == calls[1]["issued_refresh"]
    assert stored.app_auth_token == third_token
    # ... and the gateway refuses the replaced ones.
    for old in (first.app_refresh_token, calls[0]["issued_refresh"]):
        assert not alipay.refresh_token_valid(old)
        answer = requests.post(alipay.gateway_url, timeout=5, data=signed_params(
            ISV, keys.app, {"grant_type": "refresh_token", "refresh_token": old}, timestamp=alipay.china_time()))
        assert "isv.invalid-refresh-token" in answer.text

    listed = service.cli("alipay", "grants", ISV)
    assert listed.returncode == 0 and MERCHANT in listed.stdout and TOKEN_APPID in listed.stdout
    no_leak(listed.stdout + listed.stderr, alipay, keys)


def test_a_new_grant_replaces_the_stored_token(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    service = make("redis+sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    old = data(service.get())
    service.grant(alipay.authorize(ISV, MERCHANT))  # the merchant authorized again
    new = data(service.get())
    assert new != old and alipay.is_valid(new)
    assert refreshes(alipay) == []


@pytest.mark.parametrize("kind", ["sqlite", "redis+mysql"])
@pytest.mark.parametrize("with_stale", [True, False])
def test_concurrent_puts_make_one_refresh(make: Any, keys: Keys, alipay: FakeAlipay, kind: str,
                                          with_stale: bool) -> None:
    service = make(kind)
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    old = data(service.get())
    alipay.delay(0.3)  # both PUTs are in flight together
    body = {"stale_token": old} if with_stale else {}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: data(service.put(**body)), range(4)))
    assert len(set(answers)) == 1 and answers[0] != old and alipay.is_valid(answers[0])
    assert len(refreshes(alipay)) == 1


def test_scheduler_refreshes_each_merchant_near_expiry(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    alipay.expires_in = 3600
    service = make("redis+sqlite")  # margin 300 s: due 600 s before expiry
    service.seed(keys.bundle())
    for merchant in (MERCHANT, MERCHANT_2):
        service.grant(alipay.authorize(ISV, merchant))
    keys_ = {TokenKey("alipay", f"{ISV}:{m}") for m in (MERCHANT, MERCHANT_2)}

    report = service.container.service.refresh_due()
    assert set(report.refreshed) == keys_ and not report.failed  # stored from the grants
    assert refreshes(alipay) == []
    alipay.advance(2000)
    report = service.container.service.refresh_due()
    assert set(report.fresh) == keys_ and refreshes(alipay) == []

    alipay.advance(1100)  # 500 s left
    report = service.container.service.refresh_due()
    assert set(report.refreshed) == keys_ and not report.failed
    assert len(refreshes(alipay)) == 2
    for merchant in (MERCHANT, MERCHANT_2):
        current = alipay.current(ISV, merchant)
        assert current is not None and data(service.get(f"{ISV}:{merchant}")) == current.app_auth_token
    assert set(service.container.service.refresh_due().fresh) == keys_
    assert len(refreshes(alipay)) == 2


def test_expired_grant_is_refreshed_on_get(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    alipay.expires_in = 3600
    service = make("sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    old = data(service.get())
    alipay.advance(3700)
    new = data(service.get())
    assert new != old and alipay.is_valid(new) and len(refreshes(alipay)) == 1


@pytest.mark.parametrize("gateway_refuses", [False, True])
def test_a_grant_stored_during_a_refresh_wins(make: Any, keys: Keys, alipay: FakeAlipay,
                                              gateway_refuses: bool) -> None:
    """A new authorization stored while a refresh is in flight is never
    overwritten by that refresh, whether the gateway answered it or refused
    the refresh token."""
    service = make("sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    old = data(service.get())
    newer = Grant(ISV, MERCHANT, "202501BBnewAuthorization", "202501BRnewAuthorization", alipay.now() + 86400,
                  None, None, alipay.now())

    def meanwhile(req: Any) -> None:
        if "refresh_token" in req.form().get("biz_content", ""):
            SqlGrantStore(Database(sqlite_path=service.settings["sqlite_path"])).save(newer)
            if gateway_refuses:
                alipay.retire(ISV, MERCHANT)
            alipay.on_request = None

    alipay.on_request = meanwhile
    assert data(service.put(stale_token=old)) == newer.app_auth_token
    stored = service.provider.grants.get(ISV, MERCHANT)
    assert stored is not None and stored.app_refresh_token == newer.app_refresh_token
    assert len(refreshes(alipay)) == 1


# -- failures --------------------------------------------------------------------
def test_answer_with_a_bad_signature_is_refused(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    service = make("sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    old = data(service.get())
    before = service.provider.grants.get(ISV, MERCHANT)

    alipay.bad_signature = True
    error = data(service.put(), 502)
    assert "signature does not verify" in error and "Alipay public key" in error
    no_leak(error, alipay, keys)
    # Nothing from the unverified answer was stored, and it was not retried.
    assert service.provider.grants.get(ISV, MERCHANT) == before
    assert len(refreshes(alipay)) == 1
    assert data(service.get()) == old  # the stored token is still served

    alipay.bad_signature = False
    alipay.unsigned = True
    granted = service.app.test_cli_runner().invoke(
        args=["alipay", "grant", ISV, "--code", alipay.authorize(ISV, MERCHANT_2)])
    assert granted.exit_code != 0 and "not signed" in granted.output
    no_leak(granted.output, alipay, keys)
    assert "no grant for merchant" in data(service.get(f"{ISV}:{MERCHANT_2}"), 404)


def test_gateway_rejects_a_request_signed_with_the_wrong_key(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    service = make("sqlite")
    service.seed(keys.bundle(app=keys.other))
    refused = service.cli("alipay", "grant", ISV, "--code", alipay.authorize(ISV, MERCHANT))
    assert refused.returncode != 0
    [line] = [x for x in refused.stderr.splitlines() if x.startswith("Error:")]
    assert "isv.invalid-signature" in line and "private key" in line
    no_leak(refused.stdout + refused.stderr, alipay, keys)

    # A grant made with the right key, then the credential replaced by a wrong one.
    service.seed(keys.bundle(), update=True)
    service.grant(alipay.authorize(ISV, MERCHANT))
    data(service.get())
    service.seed(keys.bundle(app=keys.other), update=True)
    error = data(service.put(), 502)
    assert "alipay platform error isv.invalid-signature" in error and "[code 40002]" in error
    no_leak(error, alipay, keys)


def test_unknown_merchant_unknown_app_and_malformed_appids(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    service = make("sqlite")
    service.seed(keys.bundle())
    error = data(service.get(f"{ISV}:2021000000009999"), 404)
    assert f"pighand-token alipay grant {ISV}' (it asks for the APP_AUTH_CODE)" in error
    assert "platform add alipay 2021999999999999" in data(service.get("2021999999999999:2021000000000002"), 404)
    for appid in (ISV, f"{ISV}:", f":{MERCHANT}", f"{ISV}:{MERCHANT}:x"):
        assert "<app_id>:<auth_app_id>" in data(service.get(appid), 400)
        assert "<app_id>:<auth_app_id>" in data(service.put(appid), 400)
    assert alipay.count() == 0


def test_service_unavailable_is_retried_and_business_errors_are_not(make: Any, keys: Keys,
                                                                    alipay: FakeAlipay) -> None:
    service = make("sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    old = data(service.get())
    alipay.fail_with_errcode_next(1, 20000)
    new = data(service.put())
    assert new != old and len(refreshes(alipay)) == 2

    alipay.fail_with_errcode_next(1, 40004, "Business Failed")
    error = data(service.put(stale_token=new), 502)
    assert "alipay platform error 40004" in error and len(refreshes(alipay)) == 3


def test_refresh_token_past_its_life_asks_for_a_new_authorization(make: Any, keys: Keys,
                                                                  alipay: FakeAlipay) -> None:
    alipay.expires_in = 3600
    alipay.re_expires_in = 3000
    service = make("sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    alipay.advance(3700)
    error = data(service.get(), 502)
    assert "must authorize the app again" in error and f"alipay grant {ISV}" in error
    assert refreshes(alipay) == []


def test_revoke_forgets_the_grant_and_its_token(make: Any, keys: Keys, alipay: FakeAlipay) -> None:
    service = make("redis+sqlite")
    service.seed(keys.bundle())
    service.grant(alipay.authorize(ISV, MERCHANT))
    data(service.get())
    result = service.app.test_cli_runner().invoke(args=["alipay", "revoke", ISV, MERCHANT])
    assert result.exit_code == 0, result.output
    assert "no grant for merchant" in data(service.get(), 404)


# -- the grant table ----------------------------------------------------------------
@pytest.mark.parametrize("dialect", ["sqlite", "mysql", "postgres"])
def test_rotation_is_compare_and_set_on_the_refresh_token(dialect: str, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    if dialect == "mysql":
        db = Database(mysql=MySQLParams(host=str(MYSQL["host"]), port=int(str(MYSQL["port"])), user=str(MYSQL["user"]),
                                        database=request.getfixturevalue("mysql_db")))
    elif dialect == "postgres":
        db = Database(url=postgres_url(request.getfixturevalue("pg_db")))
    else:
        db = Database(sqlite_path=str(tmp_path / "grants.sqlite3"))
    # Sealed like secrets at rest: the same value encrypts differently each time.
    grants = SqlGrantStore(db, NonceBox())

    def pair(n: int) -> Grant:
        return Grant(ISV, MERCHANT, f"token-{n}", f"refresh-{n}", 1000.0 + n, None, "2088", float(n))

    grants.save(pair(1))
    current = grants.get(ISV, MERCHANT)
    assert current is not None and current.app_refresh_token == "refresh-1"
    assert grants.rotate(current, pair(2))
    assert not grants.rotate(current, pair(3))  # refresh-1 was used up
    stored = grants.get(ISV, MERCHANT)
    assert stored is not None and (stored.app_auth_token, stored.app_refresh_token) == ("token-2", "refresh-2")
    assert [g.token_appid for g in grants.list(ISV)] == [TOKEN_APPID]
    [raw] = db.execute("SELECT app_auth_token, app_refresh_token FROM alipay_grant")[0]
    assert "token-2" not in raw[0] and "refresh-2" not in raw[1]
    db.close()


class NonceBox:
    def encrypt(self, plaintext: str) -> str:
        return "box:" + secrets.token_hex(4) + ":" + plaintext[::-1]

    def decrypt(self, stored: str) -> str:
        return stored.split(":", 2)[2][::-1] if stored.startswith("box:") else stored


def test_response_object_is_cut_from_the_raw_text() -> None:
    text = '{ "a_response" : {"msg":"\\u6210\\u529f", "n": [1, {"x": "}"}]} , "sign":"c2ln" }'
    spans = top_level_spans(text)
    assert text[slice(*spans["a_response"])] == '{"msg":"\\u6210\\u529f", "n": [1, {"x": "}"}]}'
    assert text[slice(*spans["sign"])] == '"c2ln"'
    for bad in ("[]", '{"a": 1', '{"a": 1} x', '{"a" 1}'):
        with pytest.raises(ValueError):
            top_level_spans(bad)
