"""trusted_proxies on every serving path: the loopback rule, the audit log and
the access log see the caller a trusted proxy names, and nobody else's
X-Forwarded-For."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.wechat import FakeWeChat
from tests.integration.test_api import APP, body, seed
from tests.integration.test_security import add_client

IN_PROCESS = pytest.mark.parametrize("serving_path", ["fast", "flask"], indirect=True)


def test_the_loopback_rule_sees_the_caller_a_trusted_proxy_names(make_app: Any, wechat: FakeWeChat,
                                                                  serving_path: str) -> None:
    app = make_app(trusted_proxies="127.0.0.1")  # auth_required off: loopback callers only
    seed(app)
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}").status_code == 200  # warm: the hot path could answer next
    remote = client.get(f"/token/wechat/{APP}", headers={"X-Forwarded-For": "192.0.2.10"})
    assert remote.status_code == 403 and "loopback" in body(remote)["error"]
    assert client.get(f"/token/wechat/{APP}", headers={"X-Real-IP": "192.0.2.10"}).status_code == 403
    # A caller's own X-Forwarded-For, left of the hop the proxy added, is not believed either way.
    local = client.get(f"/token/wechat/{APP}", headers={"X-Forwarded-For": "192.0.2.10, 127.0.0.5"})
    assert local.status_code == 200
    forged = client.get(f"/token/wechat/{APP}", headers={"X-Forwarded-For": "127.0.0.1, 192.0.2.10"})
    assert forged.status_code == 403


def test_without_trusted_proxies_forwarding_headers_are_ignored(make_app: Any, wechat: FakeWeChat,
                                                                serving_path: str) -> None:
    app = make_app()
    seed(app)
    client = app.test_client()
    for headers in ({}, {"X-Forwarded-For": "192.0.2.10"}, {"X-Real-IP": "192.0.2.10"}):
        assert client.get(f"/token/wechat/{APP}", headers=headers).status_code == 200


def test_a_put_is_audited_with_the_callers_address(make_app: Any, wechat: FakeWeChat, serving_path: str) -> None:
    app = make_app(trusted_proxies="127.0.0.1,::1")
    seed(app)
    client = app.test_client()
    answer = client.put(f"/token/wechat/{APP}", headers={"X-Forwarded-For": "127.0.0.9"})
    assert answer.status_code == 200
    assert client.put(f"/token/wechat/{APP}", headers={"X-Real-IP": "127.0.0.10"}).status_code == 200
    entries = app.extensions["pighand"].audit.tail(5)
    assert [e.remote_addr for e in entries if e.action == "token.refresh"] == ["127.0.0.9", "127.0.0.10"]


@IN_PROCESS  # only the in-process client can come from another host
def test_forwarding_headers_from_an_untrusted_peer_are_ignored(make_app: Any, wechat: FakeWeChat,
                                                               serving_path: str) -> None:
    app = make_app(trusted_proxies="10.0.0.0/8", auth_required=True)
    seed(app)
    key = add_client(app, "billing", "*")
    client = app.test_client()
    for peer, forwarded, recorded in [("192.0.2.50", "10.1.1.1", "192.0.2.50"),
                                      ("10.0.0.2", "198.51.100.4", "198.51.100.4")]:
        answer = client.put(f"/token/wechat/{APP}", headers={"X-Api-Key": key, "X-Forwarded-For": forwarded},
                            environ_base={"REMOTE_ADDR": peer})
        assert answer.status_code == 200
        assert app.extensions["pighand"].audit.tail(1)[0].remote_addr == recorded


@IN_PROCESS
def test_a_forged_loopback_address_from_outside_does_not_pass_the_loopback_rule(
        make_app: Any, wechat: FakeWeChat, serving_path: str) -> None:
    app = make_app(trusted_proxies="10.0.0.0/8")
    seed(app)
    client = app.test_client()
    assert client.get(f"/token/wechat/{APP}").status_code == 200  # warm: the hot path could answer next
    for headers in ({"X-Forwarded-For": "127.0.0.1"}, {"X-Real-IP": "127.0.0.1"}):
        refused = client.get(f"/token/wechat/{APP}", headers=headers, environ_base={"REMOTE_ADDR": "192.0.2.50"})
        assert refused.status_code == 403
