"""The proxy's decisions that need no I/O: which paths may be sent, where
the token goes, which headers stay behind, what an answer's errcode is."""

from __future__ import annotations

import gzip
import io
import json
import zlib

import pytest

from pighand_token.core.errors import BadRequest
from pighand_token.core.platform_proxy import (
    BodyTooLarge,
    _decoded,
    _errcode,
    _is_code,
    _LimitedBody,
    forwarded_headers,
    query_with_token,
    route_class,
    upstream_path,
)
from pighand_token.providers.base import TokenPlacement

QUERY = TokenPlacement(query="access_token")
BEARER = TokenPlacement(header="Authorization", prefix="Bearer ")


def test_a_path_is_sent_under_the_base_each_segment_encoded_again() -> None:
    assert upstream_path("cgi-bin/message/custom/send") == "/cgi-bin/message/custom/send"
    assert upstream_path("v1.0/contact/users/ü ser") == "/v1.0/contact/users/%C3%BC%20ser"
    # A decoded "%41" is a literal percent sign, not an escape to pass on.
    assert upstream_path("a/%41") == "/a/%2541"
    assert upstream_path("open-apis/im/v1/messages/") == "/open-apis/im/v1/messages/"


@pytest.mark.parametrize("path", ["..", "a/..", "../b", "a/./b", ".", "a\\b", "a%2fb", "a%5Cb", "http://x/y",
                                  "HTTPS:x", "//x/y", "/x", "u@x/y", "u@x", "a/\x00", ""])
def test_a_path_that_could_leave_the_base_is_refused(path: str) -> None:
    with pytest.raises(BadRequest):
        upstream_path(path)


def test_an_encoded_slash_in_the_request_target_is_refused_even_when_the_path_arrives_decoded() -> None:
    with pytest.raises(BadRequest, match="encoded slash"):
        upstream_path("cgi-bin/x", raw_uri="/proxy/wechat/wx1/cgi-bin%2Fx?a=1")
    assert upstream_path("cgi-bin/x", raw_uri="/proxy/wechat/wx1/cgi-bin/x?next=%2F") == "/cgi-bin/x"
    # "@" after the first segment is an ordinary path character.
    assert upstream_path("users/a@b.example") == "/users/a@b.example"


def test_the_hubs_token_replaces_any_the_caller_sent() -> None:
    assert query_with_token("access_token=mine&type=image&ACCESS_TOKEN=x", QUERY, "t/1") == \
        "type=image&access_token=t%2F1"
    assert query_with_token("", QUERY, "t") == "access_token=t"
    # A header platform leaves the query as it is.
    assert query_with_token("access_token=x&a=1", BEARER, "t") == "access_token=x&a=1"


def test_credentials_and_hop_by_hop_headers_stay_behind() -> None:
    sent = forwarded_headers([("X-Api-Key", "k"), ("Authorization", "Bearer k"), ("Cookie", "c=1"),
                              ("Connection", "close, X-Custom-Hop"), ("X-Custom-Hop", "1"), ("TE", "trailers"),
                              ("Proxy-Authorization", "Basic x"), ("Host", "hub"), ("Content-Length", "3"),
                              ("Content-Type", "application/json"), ("X-Trace", "abc")], BEARER)
    assert sent == {"Content-Type": "application/json", "X-Trace": "abc", "Accept-Encoding": "identity"}
    assert forwarded_headers([("Accept-Encoding", "gzip")], QUERY) == {"Accept-Encoding": "gzip"}
    dingtalk = TokenPlacement(header="x-acs-dingtalk-access-token")
    assert forwarded_headers([("X-Acs-Dingtalk-Access-Token", "mine")], dingtalk) == {"Accept-Encoding": "identity"}


def test_route_classes_are_the_first_two_segments() -> None:
    assert route_class("cgi-bin/message/custom/send") == "cgi-bin/message"
    assert route_class("open-apis/contact/v3/users") == "open-apis/contact"
    assert route_class("x") == "x"
    assert route_class("weird seg/x") == "other"


def test_the_errcode_is_read_from_small_json_whatever_its_coding() -> None:
    body = json.dumps({"errcode": 40001, "errmsg": "invalid credential"}).encode()
    assert _errcode(_decoded(body, "")) == 40001
    assert _errcode(_decoded(gzip.compress(body), "gzip")) == 40001
    assert _errcode(_decoded(zlib.compress(body), "deflate")) == 40001
    assert _errcode(_decoded(body, "br")) is None  # not decoded: not looked into
    assert _errcode(b'{"code": "InvalidAuthentication"}') == "InvalidAuthentication"
    assert _errcode(b'{"code": 0, "msg": "ok"}') == 0
    assert _errcode(b"[1]") is None and _errcode(b"\xff") is None and _errcode(b'{"errcode": true}') is None
    assert _is_code("40001", frozenset({40001})) and not _is_code(40002, frozenset({40001}))


def test_a_streamed_body_stops_at_the_limit() -> None:
    body = _LimitedBody(io.BytesIO(b"x" * 100), 64, None)
    with pytest.raises(BodyTooLarge):
        b"".join(body)
    assert body.too_large
    declared = _LimitedBody(io.BytesIO(b"y" * 50), 64, 50, prefix=b"")
    assert len(declared) == 50 and b"".join(declared) == b"y" * 50


def test_each_platform_declares_where_its_token_goes() -> None:
    DINGTALK = TokenPlacement(header="x-acs-dingtalk-access-token")  # noqa: N806
    from pighand_token.providers import REGISTRY

    placements = {name: build.__self__.token_placement for name, build in REGISTRY.items()}  # type: ignore[attr-defined]
    assert placements == {
        "wechat": QUERY, "wechat_authorizer": QUERY, "wecom": QUERY, "wecom_corp": QUERY,
        "wechat_component": TokenPlacement(query="component_access_token"),
        "wecom_suite": TokenPlacement(query="suite_access_token"),
        "wecom_provider": TokenPlacement(query="provider_access_token"),
        "feishu": BEARER, "feishu_app": BEARER, "lark": BEARER, "lark_app": BEARER,
        "feishu_store": BEARER, "feishu_tenant": BEARER, "lark_store": BEARER, "lark_tenant": BEARER,
        "dingtalk": DINGTALK, "dingtalk_suite": DINGTALK, "dingtalk_corp": DINGTALK,
        "alipay": None,
    }
    with pytest.raises(ValueError):
        TokenPlacement()
