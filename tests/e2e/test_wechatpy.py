"""The README's wechatpy recipe (examples/wechatpy_hub.py), run with the real
wechatpy against the shipped server, which fetches from the fake WeChat over
HTTP: wechatpy caches the token as long as the hub serves it, reports a
rejected token with ``stale_token`` and asks again at the token's end."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from examples.wechatpy_hub import HubWeChatClient
from pighand_token.app import create_app
from pighand_token.client import TokenClient
from pighand_token.core.domain import Credential
from tests.conftest import ROOT, Server, app_overrides
from tests.fakes.wechat import API_PATH, STABLE_PATH, FakeWeChat
from tests.integration.test_security import add_client

APPS = [f"wx_wechatpy_{n}" for n in range(3)]
SHORT_APP = "wx_wechatpy_short"  # a 4 s token: served for 2 s


def secret_of(appid: str) -> str:
    return f"secret-{appid}"


@dataclass
class Hub:
    url: str
    key: str


@pytest.fixture(scope="module")
def wechat() -> Iterator[FakeWeChat]:
    with FakeWeChat() as fake:
        for appid in APPS:
            fake.add_app(appid, secret_of(appid))
        fake.add_app(SHORT_APP, secret_of(SHORT_APP), expires_in=4)
        yield fake


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, wechat: FakeWeChat) -> Iterator[Hub]:
    tmp: Path = tmp_path_factory.mktemp("wechatpy")
    settings = {"sqlite_path": str(tmp / "p.sqlite3"), **app_overrides(wechat, auth_required=True)}
    app = create_app(overrides=settings)
    for appid in [*APPS, SHORT_APP]:
        app.extensions["pighand"].credentials.add(Credential("wechat", appid, secret_of(appid)))
    key = add_client(app, "wechatpy", "wechat:*")
    with Server(tmp, **settings) as server:
        yield Hub(server.base_url, key)


class Recorded:
    """A TokenClient whose requests to the hub are listed as (method, path)."""

    def __init__(self, hub: Hub) -> None:
        self.requests: list[tuple[str, str]] = []
        session = requests.Session()
        session.hooks["response"].append(self._record)
        self.client = TokenClient(hub.url, hub.key, session=session)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        assert response.request.method is not None and response.request.path_url is not None
        self.requests.append((response.request.method, response.request.path_url))

    @property
    def methods(self) -> list[str]:
        return [method for method, _ in self.requests]


def wechatpy_client(hub_client: TokenClient, appid: str, wechat: FakeWeChat) -> HubWeChatClient:
    client = HubWeChatClient(appid, hub_client, timeout=5)
    client.API_BASE_URL = wechat.url("/cgi-bin/")  # the fake platform instead of api.weixin.qq.com
    return client


def api_call(client: HubWeChatClient) -> dict[str, Any]:
    """A business API through wechatpy (its request, errcode handling and retry)."""
    answer: dict[str, Any] = client.get(API_PATH.removeprefix("/cgi-bin/"))
    return answer


def force_refreshes(wechat: FakeWeChat, appid: str) -> int:
    return sum(1 for call in wechat.find(STABLE_PATH, appid=appid) if call["force_refresh"])


def test_the_readme_recipe_is_the_tested_module() -> None:
    recipe = (ROOT / "examples" / "wechatpy_hub.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert recipe in blocks


def test_wechatpy_caches_the_hub_token_as_long_as_the_hub_serves_it(hub: Hub, wechat: FakeWeChat) -> None:
    appid = APPS[0]
    recorded = Recorded(hub)
    client = wechatpy_client(recorded.client, appid, wechat)
    before = time.time()
    assert api_call(client)["ip_list"]
    token = client.session.get(client.access_token_key)
    assert token == wechat.current_token(appid)
    # A 7200 s token served until 300 s before its end; wechatpy keeps 60 s in hand.
    assert before + 6899 + 60 <= client.expires_at <= time.time() + 6900 + 60
    for _ in range(5):
        assert api_call(client)["errcode"] == 0
    assert recorded.methods == ["GET"] and wechat.count(STABLE_PATH, appid=appid) == 1


def test_a_rejected_token_is_reported_once_and_every_holder_gets_the_replacement(hub: Hub,
                                                                                   wechat: FakeWeChat) -> None:
    appid = APPS[1]
    first, second = Recorded(hub), Recorded(hub)
    one, other = wechatpy_client(first.client, appid, wechat), wechatpy_client(second.client, appid, wechat)
    api_call(one)
    api_call(other)
    stale = one.session.get(one.access_token_key)
    assert other.session.get(other.access_token_key) == stale
    wechat.invalidate(stale)  # the platform now answers 40001 for it

    assert api_call(one)["errcode"] == 0  # wechatpy retried with the replacement
    fresh = one.session.get(one.access_token_key)
    assert fresh != stale and fresh == wechat.current_token(appid)
    assert first.requests == [("GET", f"/token/wechat/{appid}"), ("PUT", f"/token/wechat/{appid}")]
    assert time.time() + 6899 + 60 - 5 <= one.expires_at <= time.time() + 6900 + 60
    # The other holder reports the same token: the same replacement, no platform call.
    assert api_call(other)["errcode"] == 0
    assert other.session.get(other.access_token_key) == fresh and second.methods == ["GET", "PUT"]
    assert force_refreshes(wechat, appid) == 1


def test_a_token_at_its_end_is_asked_for_again_not_reported(hub: Hub, wechat: FakeWeChat) -> None:
    recorded = Recorded(hub)
    client = wechatpy_client(recorded.client, SHORT_APP, wechat)
    api_call(client)
    first = client.session.get(client.access_token_key)
    time.sleep(2.2)  # the hub serves a 4 s token for 2 s
    assert api_call(client)["errcode"] == 0
    assert client.session.get(client.access_token_key) != first
    assert set(recorded.methods) == {"GET"} and force_refreshes(wechat, SHORT_APP) == 0
