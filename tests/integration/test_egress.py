"""One egress: with ``platform_http_proxy`` every platform call goes through
a real HTTP forward proxy on loopback (tests/fakes/forward_proxy.py), which
counts what passes and marks what it forwards with a ``Via`` header;
``no_proxy`` hosts go straight out; a proxy that is down is a clear 502."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pighand_token.app import create_app
from pighand_token.core.domain import Credential
from tests.conftest import Server, app_overrides, free_port, require_binary, stop_process, storage_overrides
from tests.e2e.test_workers import seed
from tests.fakes.dingtalk import TOKEN_PATH as DING_TOKEN
from tests.fakes.dingtalk import FakeDingTalk
from tests.fakes.forward_proxy import VIA, ForwardProxy
from tests.fakes.wechat import STABLE_PATH, TICKET_PATH, FakeWeChat
from tests.fakes.wecom import TOKEN_PATH as WECOM_TOKEN
from tests.fakes.wecom import FakeWeCom

WX_APP, WX_SECRET = "wx_app_1", "s3cr3t-wx-1"  # seeded in the conftest's wechat fixture
CORP, AGENT, WECOM_SECRET = "ww0123456789abcdef", "1000002", "wc-S3cr3t_4pp-1000002-xyz"
WECOM_APP = f"{CORP}:{AGENT}"
DING_KEY, DING_SECRET = "dingfakeappkey0001", "dt-S3cr3t_ding-0001-xyz"
PROXY_USER, PROXY_PASSWORD = "egress", "Pr0xy-S3cret-pw"


@pytest.fixture
def wecom() -> Iterator[FakeWeCom]:
    with FakeWeCom() as fake:
        fake.add_app(CORP, AGENT, WECOM_SECRET)
        yield fake


@pytest.fixture
def dingtalk() -> Iterator[FakeDingTalk]:
    with FakeDingTalk() as fake:
        fake.add_app(DING_KEY, DING_SECRET)
        yield fake


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as running:
        yield running


@pytest.fixture
def make(tmp_path: Path, request: pytest.FixtureRequest, wechat: FakeWeChat, wecom: FakeWeCom,
         dingtalk: FakeDingTalk) -> Any:
    """make(**settings) -> an app on SQLite whose platforms are the fakes,
    seeded with one credential on each."""
    def make_app(kind: str = "sqlite", **extra: Any) -> Any:
        settings = {"wecom_api_base": wecom.base_url, "dingtalk_api_base": dingtalk.base_url, **extra}
        app = create_app(overrides={**storage_overrides(kind, request, tmp_path),
                                    **app_overrides(wechat, **settings)})
        credentials = app.extensions["pighand"].credentials
        for platform, appid, secret in (("wechat", WX_APP, WX_SECRET), ("wecom", WECOM_APP, WECOM_SECRET),
                                        ("dingtalk", DING_KEY, DING_SECRET)):
            credentials.add(Credential(platform, appid, secret))
        return app
    return make_app


def target(fake: FakeWeChat | FakeWeCom | FakeDingTalk) -> str:
    return f"127.0.0.1:{fake.port}"


def token(app: Any, platform: str, appid: str) -> dict[str, Any]:
    response = app.test_client().get(f"/token/{platform}/{appid}")
    body = response.get_json()
    assert body["code"] == response.status_code
    return dict(body)


# -- through the proxy -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", "redis+mysql"])
def test_token_fetches_of_every_platform_go_through_the_proxy(make: Any, proxy: ForwardProxy, wechat: FakeWeChat,
                                                              wecom: FakeWeCom, dingtalk: FakeDingTalk,
                                                              kind: str) -> None:
    app = make(kind, platform_http_proxy=proxy.url)
    for platform, appid in (("wechat", WX_APP), ("wecom", WECOM_APP), ("dingtalk", DING_KEY)):
        assert token(app, platform, appid)["code"] == 200
    assert proxy.count(target(wechat)) == 1
    assert proxy.count(target(wecom)) == 1
    assert proxy.count(target(dingtalk)) == 1
    assert proxy.count(passed=False) == 0
    # Each platform saw the call arrive from the proxy, not from the hub.
    assert [call["via"] for call in wechat.find(STABLE_PATH)] == [VIA]
    assert [call["via"] for call in wecom.find(WECOM_TOKEN)] == [VIA]
    assert [call["via"] for call in dingtalk.find(DING_TOKEN)] == [VIA]


def test_ticket_fetches_go_through_the_proxy_too(make: Any, proxy: ForwardProxy, wechat: FakeWeChat) -> None:
    app = make(platform_http_proxy=proxy.url)
    response = app.test_client().get(f"/ticket/wechat/{WX_APP}/jsapi")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [call["via"] for call in wechat.find(TICKET_PATH)] == [VIA]
    assert proxy.count(target(wechat)) == 2  # the token, then the ticket


def test_proxied_api_calls_go_through_the_forward_proxy_too(make: Any, proxy: ForwardProxy,
                                                           wechat: FakeWeChat) -> None:
    app = make(platform_http_proxy=proxy.url)
    response = app.test_client().get(f"/proxy/wechat/{WX_APP}/cgi-bin/get_api_domain_ip")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json().get("errcode", 0) == 0 and response.get_json()["ip_list"]
    assert proxy.count(target(wechat)) == 2  # the token, then the proxied call
    assert [call["via"] for call in wechat.find("/cgi-bin/get_api_domain_ip")] == [VIA]


def test_without_the_setting_platform_calls_go_straight_out_whatever_the_hosts_proxy_variables_say(
        make: Any, wechat: FakeWeChat, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy variable left on the host for some other program (here one
    # that nothing listens on) does not take platform calls anywhere.
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    app = make()
    assert token(app, "wechat", WX_APP)["code"] == 200
    assert [call["via"] for call in wechat.find(STABLE_PATH)] == [None]


def test_the_hosts_no_proxy_variable_does_not_bypass_the_setting(make: Any, proxy: ForwardProxy,
                                                                  wechat: FakeWeChat,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    app = make(platform_http_proxy=proxy.url)
    assert token(app, "wechat", WX_APP)["code"] == 200
    assert proxy.count(target(wechat)) == 1


def loopback_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "loopback.crt", folder / "loopback.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_wechat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWeChat]:
    """The fake WeChat over HTTPS, its certificate trusted through
    REQUESTS_CA_BUNDLE (still honoured: it changes no route)."""
    cert, key = loopback_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with FakeWeChat().serve_tls(context) as fake:
        fake.add_app(WX_APP, WX_SECRET)
        assert fake.base_url.startswith("https://")
        yield fake


def test_https_platform_calls_go_through_the_proxys_connect_tunnel(make: Any, proxy: ForwardProxy,
                                                                   tls_wechat: FakeWeChat) -> None:
    app = make(platform_http_proxy=proxy.url, wechat_api_base=tls_wechat.base_url)
    assert token(app, "wechat", WX_APP)["code"] == 200
    assert tls_wechat.count(STABLE_PATH) == 1
    assert [(r["method"], r["target"]) for r in proxy.records()] == [("CONNECT", target(tls_wechat))]


def test_a_tunnel_refused_for_wrong_credentials_is_named_and_not_retried(make: Any, proxy: ForwardProxy,
                                                                         tls_wechat: FakeWeChat) -> None:
    app = make(platform_http_proxy=f"http://{PROXY_USER}:not-the-password@127.0.0.1:{proxy.port}",
               wechat_api_base=tls_wechat.base_url)
    body = token(app, "wechat", WX_APP)
    assert body["code"] == 502
    assert f"platform_http_proxy http://***@127.0.0.1:{proxy.port} refused the request (HTTP 407" in body["error"]
    assert "not-the-password" not in body["error"]
    assert proxy.records() == [{"method": "CONNECT", "target": target(tls_wechat), "passed": False}]
    assert tls_wechat.count() == 0


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[str]:
    """Debian's tinyproxy on a loopback port of its own, in the foreground; its URL."""
    binary = require_binary("tinyproxy", "tinyproxy")
    port = free_port()
    config = tmp_path / "tinyproxy.conf"
    config.write_text(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 10\nMaxClients 20\n"
                      f"LogLevel Info\nLogFile \"{tmp_path / 'tinyproxy.log'}\"\n")
    proc = subprocess.Popen([binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "tinyproxy did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def test_debians_tinyproxy_carries_the_token_fetches_too(make: Any, tinyproxy: str, wechat: FakeWeChat,
                                                         wecom: FakeWeCom) -> None:
    app = make(platform_http_proxy=tinyproxy)
    assert token(app, "wechat", WX_APP)["code"] == 200
    assert token(app, "wecom", WECOM_APP)["code"] == 200
    vias = [call["via"] for call in wechat.find(STABLE_PATH) + wecom.find(WECOM_TOKEN)]
    assert len(vias) == 2
    assert all(via is not None and "tinyproxy" in via for via in vias), vias


# -- no_proxy ------------------------------------------------------------------------
def test_no_proxy_hosts_bypass_the_proxy_and_the_others_still_use_it(make: Any, proxy: ForwardProxy,
                                                                     wechat: FakeWeChat, wecom: FakeWeCom) -> None:
    app = make(platform_http_proxy=proxy.url, no_proxy=[target(wecom)])
    assert token(app, "wecom", WECOM_APP)["code"] == 200
    assert token(app, "wechat", WX_APP)["code"] == 200
    assert proxy.count(target(wecom)) == 0
    assert [call["via"] for call in wecom.find(WECOM_TOKEN)] == [None]
    assert proxy.count(target(wechat)) == 1


# -- failures ------------------------------------------------------------------------
def test_with_the_proxy_down_a_token_request_is_a_502_naming_the_proxy_without_its_password(
        make: Any, wechat: FakeWeChat, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    down = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{free_port()}"
    app = make(platform_http_proxy=down)
    body = token(app, "wechat", WX_APP)
    assert body["code"] == 502
    assert body["data"] is None
    assert "platform_http_proxy" in body["error"]
    assert f"***@127.0.0.1:{down.rsplit(':', 1)[1]}" in body["error"]
    for secret in (PROXY_PASSWORD, PROXY_USER + ":", WX_SECRET):
        assert secret not in body["error"]
        assert secret not in caplog.text
    assert wechat.count() == 0


def test_a_proxy_that_refuses_the_credentials_is_a_502_and_nothing_reaches_the_platform(
        make: Any, proxy: ForwardProxy, wechat: FakeWeChat) -> None:
    wrong = f"http://{PROXY_USER}:not-the-password@127.0.0.1:{proxy.port}"
    body = token(make(platform_http_proxy=wrong), "wechat", WX_APP)
    assert body["code"] == 502
    assert f"platform_http_proxy http://***@127.0.0.1:{proxy.port} refused the request (HTTP 407" in body["error"]
    assert "not-the-password" not in body["error"]
    assert proxy.count(passed=False) >= 1
    assert wechat.count() == 0


# -- the shipped server ----------------------------------------------------------------
def test_the_served_workers_fetch_through_the_proxy_set_in_the_environment(tmp_path: Path, proxy: ForwardProxy,
                                                                           wechat: FakeWeChat) -> None:
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    seed(settings, (WX_APP, WX_SECRET))
    with Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                platform_http_proxy=proxy.url, **settings) as server:
        answer = requests.get(f"{server.base_url}/token/wechat/{WX_APP}", timeout=10)
        assert answer.status_code == 200, answer.text
        log = server.log()
    assert proxy.count(target(wechat)) == 1
    assert [call["via"] for call in wechat.find(STABLE_PATH)] == [VIA]
    assert f"platform calls go through platform_http_proxy http://***@127.0.0.1:{proxy.port}" in log
    assert PROXY_PASSWORD not in log
