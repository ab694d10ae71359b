"""Alipay grants under the shipped server: four workers, one merchant whose stored
app_auth_token has expired, against the fake gateway over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from pighand_token.app import create_app
from pighand_token.core.domain import Credential
from pighand_token.providers.alipay import AlipayProvider
from tests.conftest import Server
from tests.e2e.test_workers import envelope, storage
from tests.fakes.alipay import GATEWAY_PATH, FakeAlipay, make_key, private_pem, public_pem

ISV = "2021000000000001"
MERCHANT = "2021000000000002"
TOKEN_APPID = f"{ISV}:{MERCHANT}"


@pytest.fixture(scope="module")
def key_pairs() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """(the ISV app's key, the gateway's key)."""
    return make_key(), make_key()


@pytest.fixture
def alipay(key_pairs: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Iterator[FakeAlipay]:
    app_key, gateway_key = key_pairs
    with FakeAlipay(private_key=gateway_key) as fake:
        fake.add_app(ISV, public_pem(app_key))
        yield fake


def granted_then_expired(settings: dict[str, Any], alipay: FakeAlipay, app_key: rsa.RSAPrivateKey) -> str:
    """Store the credential and the merchant's grant as the operator would
    (same stores and keys as the workers), then age the stored token past its
    expiry; return the expired token."""
    app = create_app(overrides={**settings, "alipay_gateway": alipay.gateway_url, "is_enable_schedule": False,
                                "auth_required": False})
    container = app.extensions["pighand"]
    container.credentials.add(Credential("alipay", ISV, private_pem(app_key) + alipay.public_key_pem))
    result = app.test_cli_runner().invoke(args=["alipay", "grant", ISV, "--code", alipay.authorize(ISV, MERCHANT)])
    assert result.exit_code == 0, result.output
    provider = container.service.providers["alipay"]
    assert isinstance(provider, AlipayProvider)
    container.db.execute("UPDATE alipay_grant SET expires_at = ?, updated_at = ? WHERE app_id = ?",
                         (time.time() - 60, time.time() - 86400, ISV))
    grant = provider.grants.get(ISV, MERCHANT)
    assert grant is not None and grant.expires_at < time.time()
    container.db.close()
    return grant.app_auth_token


@pytest.mark.parametrize("kind", ["sqlite", "redis+mysql"])
def test_cold_stampede_on_an_expired_grant_makes_one_refresh(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest, alipay: FakeAlipay,
        key_pairs: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    settings = storage(kind, tmp_path, request)
    expired = granted_then_expired(settings, alipay, key_pairs[0])
    alipay.delay(0.2)  # a slow gateway widens the race
    with Server(tmp_path, workers=4, alipay_gateway=alipay.gateway_url, is_enable_schedule=False,
                  **settings) as server:
        url = f"{server.base_url}/token/alipay/{TOKEN_APPID}"
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: requests.get(url, timeout=30), range(80)))
        assert [a.status_code for a in answers] == [200] * 80, server.log()
        served = {envelope(a)["data"] for a in answers}
        current = alipay.current(ISV, MERCHANT)
        assert current is not None and served == {current.app_auth_token} and expired not in served
        assert alipay.count(GATEWAY_PATH, grant_type="refresh_token") == 1

        # Every client then reports that token rejected at once: one more refresh.
        with ThreadPoolExecutor(20) as pool:
            puts = list(pool.map(lambda _: requests.put(url, json={"stale_token": current.app_auth_token},
                                                        timeout=30), range(20)))
        assert [p.status_code for p in puts] == [200] * 20, server.log()
        assert len({envelope(p)["data"] for p in puts}) == 1
        assert alipay.count(GATEWAY_PATH, grant_type="refresh_token") == 2
        assert alipay.is_valid(envelope(puts[0])["data"]) and not alipay.is_valid(current.app_auth_token)
