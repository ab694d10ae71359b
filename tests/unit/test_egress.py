"""The egress settings: what ``platform_http_proxy`` and ``no_proxy`` accept,
which hosts skip the proxy, and how a proxy URL with credentials is shown."""

from __future__ import annotations

import os

import pytest

from pighand_token.adapters.egress import PlatformSession
from pighand_token.config import load_settings
from pighand_token.core.egress import NoProxy, redact_url
from pighand_token.core.errors import SettingsError


@pytest.fixture(autouse=True)
def no_stray_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("PIGHAND_", "DYNACONF_")) or name.endswith("_FOR_DYNACONF"):
            monkeypatch.delenv(name)


def test_by_default_platform_calls_use_no_proxy() -> None:
    settings = load_settings()
    assert settings.platform_http_proxy == ""
    assert settings.no_proxy == ()


@pytest.mark.parametrize("url", ["socks5://proxy:1080", "proxy:3128", "http://proxy", "http://:3128",
                                 "http://proxy:3128/path", "http://proxy:99999", "ftp://proxy:21"])
def test_a_bad_proxy_url_stops_start_up_naming_the_setting(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"platform_http_proxy": url})
    assert caught.value.message.startswith("platform_http_proxy=")
    assert "is invalid" in caught.value.message


def test_the_proxy_password_is_never_in_the_start_up_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGHAND_PLATFORM_HTTP_PROXY", "socks5://egress:Pr0xy-S3cret@proxy.internal:1080")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "Pr0xy-S3cret" not in caught.value.message
    assert "egress" not in caught.value.message
    assert "***@proxy.internal:1080" in caught.value.message


def test_the_proxy_url_is_kept_out_of_the_settings_repr() -> None:
    settings = load_settings({"platform_http_proxy": "http://egress:Pr0xy-S3cret@proxy.internal:3128"})
    assert settings.platform_http_proxy == "http://egress:Pr0xy-S3cret@proxy.internal:3128"
    assert "Pr0xy-S3cret" not in repr(settings)


def test_no_proxy_is_read_as_a_list_or_as_comma_separated_text(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({"no_proxy": ["internal.example.com", "10.0.0.0/8"]}).no_proxy == (
        "internal.example.com", "10.0.0.0/8")
    monkeypatch.setenv("PIGHAND_NO_PROXY", "internal.example.com, 10.0.0.0/8,127.0.0.1:8080")
    assert load_settings().no_proxy == ("internal.example.com", "10.0.0.0/8", "127.0.0.1:8080")


@pytest.mark.parametrize("entry", ["exa mple.com/x", "host:port", "10.0.0.1:0", "[::1]x", "a..b"])
def test_a_bad_no_proxy_entry_stops_start_up_naming_it(entry: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"no_proxy": [entry]})
    assert caught.value.message.startswith("no_proxy=")


@pytest.mark.parametrize(("url", "bypassed"), [
    ("https://internal.example.com/x", True),
    ("https://api.internal.example.com/x", True),
    ("https://notinternal.example.com/x", False),
    ("https://api.weixin.qq.com/cgi-bin/token", False),
    ("http://10.1.2.3:8080/", True),
    ("http://11.1.2.3/", False),
    ("http://127.0.0.1:8080/", True),
    ("http://127.0.0.1:8081/", False),
    ("http://[::1]:9000/", True),
    ("http://[::1]:9001/", False),
])
def test_no_proxy_matches_hosts_their_subdomains_networks_and_ports(url: str, bypassed: bool) -> None:
    rules = NoProxy((".internal.example.com", "10.0.0.0/8", "127.0.0.1:8080", "[::1]:9000"))
    assert rules.bypasses(url) is bypassed


def test_a_star_in_no_proxy_bypasses_every_host() -> None:
    assert NoProxy(("*",)).bypasses("https://api.weixin.qq.com/")


def test_redact_url_hides_user_and_password() -> None:
    assert redact_url("http://egress:Pr0xy-S3cret@proxy.internal:3128") == "http://***@proxy.internal:3128"
    assert redact_url("http://proxy.internal:3128") == "http://proxy.internal:3128"


def test_the_session_never_reads_proxy_variables_of_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://elsewhere.example:1")
    monkeypatch.setenv("NO_PROXY", "api.weixin.qq.com")
    direct = PlatformSession()
    merged = direct.merge_environment_settings("https://api.weixin.qq.com/cgi-bin/token", {}, None, None, None)
    assert merged["proxies"] == {}
    routed = PlatformSession("http://proxy.internal:3128")
    merged = routed.merge_environment_settings("https://api.weixin.qq.com/cgi-bin/token", {}, None, None, None)
    assert merged["proxies"] == {"http": "http://proxy.internal:3128", "https": "http://proxy.internal:3128"}
