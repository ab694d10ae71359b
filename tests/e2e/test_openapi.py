"""GET /openapi.json: a valid OpenAPI 3.1 document of every route the app
serves, a schemathesis run against a live server holding the API to it, and a
client generated from it by openapi-python-client that types every answer."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_type_hints

import httpx
import pytest
import requests
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator

from pighand_token.adapters.sql import Database, SqlClients
from pighand_token.core.auth import hash_key, new_key
from pighand_token.core.callbacks import CallbackProvider
from pighand_token.core.domain import Client
from pighand_token.core.errors import BadRequest
from pighand_token.web.openapi import build_document
from tests.conftest import Server
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

EXAMPLE_APPID = "wx1234567890abcdef"
TOKEN_ROUTE = "/token/{platform}/{appid}"
TICKET_ROUTE = "/ticket/{platform}/{appid}/{ticket_type}"
NO_KEY_PATHS = ("/healthz", "/readyz", "/openapi.json")
ENVELOPE_FIELDS = {"code", "data", "error"}
APPID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "ignored_auth", "unsupported_method",
          "allow_header_conformance", "positive_data_acceptance")
# A PUT may name the stale token in the query and in the body at once; a document cannot say that the two
# must agree, and the service refuses them with 400 when they differ.
SCHEMATHESIS_CONFIG = """
[[operations]]
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "429", "5xx"]
"""


def document(app: Any) -> dict[str, Any]:
    answer = app.test_client().get("/openapi.json")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.headers["X-Request-Id"]
    return dict(answer.get_json())


def valid_openapi_31(doc: dict[str, Any]) -> None:
    OpenAPIV31SpecValidator(doc).validate()
    assert doc["openapi"].startswith("3.1.")


def flask_routes(app: Any) -> set[tuple[str, str]]:
    """(OpenAPI path, method) for each rule in the url_map, HEAD and OPTIONS aside."""
    return {(re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
            for rule in app.url_map.iter_rules() for method in rule.methods or ()
            if method not in ("HEAD", "OPTIONS")}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def params(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in (resolve(doc, p) for p in op["parameters"])}


def route_of(path: str) -> str:
    """``/token/wechat/{appid}`` -> the Flask route ``/token/{platform}/{appid}``."""
    return re.sub(r"^/(token|ticket|callback|authorize|proxy)/[^/{}]+/", r"/\1/{platform}/", path)


def token_paths(platform: str) -> tuple[str, str]:
    return f"/token/{platform}/{{appid}}", f"/ticket/{platform}/{{appid}}/{{ticket_type}}"


# -- the document ------------------------------------------------------------------
@pytest.mark.parametrize("auth_required", [True, False])
def test_document_is_served_without_a_key_and_is_valid_openapi_31(make_app: Any, auth_required: bool) -> None:
    doc = document(make_app(auth_required=auth_required))
    valid_openapi_31(doc)
    assert doc["info"]["title"] == "pighand-token"


@pytest.mark.parametrize("auth_required", [True, False])
def test_full_document_is_valid_for_any_settings(auth_required: bool) -> None:
    operational = {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"), ("/", "get"),
                   ("/openapi.json", "get")}
    doc = build_document(platforms=["wechat", "feishu"], ticket_types={"wechat": ("jsapi", "wx_card")},
                         auth_required=auth_required)
    valid_openapi_31(doc)
    assert set(operations(doc)) == operational | {
        ("/token/wechat/{appid}", "get"), ("/token/wechat/{appid}", "put"), ("/token/feishu/{appid}", "get"),
        ("/token/feishu/{appid}", "put"), ("/ticket/wechat/{appid}/{ticket_type}", "get")}
    # No platform issues tickets: every ticket URL answers 404, and no ticket path is listed.
    doc = build_document(platforms=["feishu"], ticket_types={}, auth_required=auth_required)
    valid_openapi_31(doc)
    assert set(operations(doc)) == operational | {("/token/feishu/{appid}", "get"), ("/token/feishu/{appid}", "put")}
    assert len({op["operationId"] for op in operations(doc).values()}) == len(operations(doc))


def test_document_lists_exactly_the_routes_flask_serves(make_app: Any) -> None:
    app = make_app(auth_required=True)
    routes = flask_routes(app)
    assert {(TOKEN_ROUTE, "get"), (TOKEN_ROUTE, "put"), (TICKET_ROUTE, "get"), ("/openapi.json", "get")} <= routes
    assert {(route_of(path), method) for path, method in operations(document(app))} == routes


def test_each_platform_has_its_own_paths_and_appid_form(make_app: Any) -> None:
    app = make_app(auth_required=True)
    doc = document(app)
    ops = operations(doc)
    service = app.extensions["pighand"].service
    platforms = service.platforms()
    assert {"wechat", "wecom", "alipay", "dingtalk", "feishu"} <= set(platforms)
    token_ops = {path.split("/")[2] for path, _ in ops if path.startswith("/token/")}
    assert token_ops == set(platforms)
    patterns = {}
    for platform in platforms:
        token, ticket = token_paths(platform)
        get, put = params(doc, ops[(token, "get")]), params(doc, ops[(token, "put")])
        assert set(get) == {"appid", "X-Request-Id"} and get["appid"]["required"]
        assert get["appid"]["schema"] == put["appid"]["schema"]
        schema = get["appid"]["schema"]
        assert schema["maxLength"] == 128
        patterns[platform] = schema["pattern"]
        # The example is an appid the service takes for this platform.
        example = get["appid"].get("example")
        if example is not None:
            assert re.fullmatch(schema["pattern"].strip("^$"), example)
            service.key(platform, example)
        assert ((ticket, "get") in ops) == (platform in ("wechat", "wechat_authorizer")), platform
    assert patterns["wechat"] == "^(?:[A-Za-z0-9_.:-]{1,128})$"
    assert patterns["wecom"] == "^(?:[A-Za-z0-9_.-]+:[0-9]+)$"
    assert patterns["alipay"] == "^(?:[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+)$"
    assert patterns["dingtalk"] == "^(?:[A-Za-z0-9_.-]{1,128})$"
    assert patterns["wechat_authorizer"] == "^(?:[A-Za-z0-9_.-]{1,63}:[A-Za-z0-9_.-]{1,64})$"
    ticket = params(doc, ops[(token_paths("wechat")[1], "get")])
    assert ticket["ticket_type"]["schema"]["enum"] == ["jsapi", "wx_card"]


def test_third_party_platforms_have_their_callback_and_authorization_routes(make_app: Any) -> None:
    app = make_app(auth_required=True)
    doc = document(app)
    ops = operations(doc)
    providers = app.extensions["pighand"].service.providers
    third_party = {name for name, provider in providers.items() if isinstance(provider, CallbackProvider)}
    assert "wechat_component" in third_party and "wechat_authorizer" not in third_party
    for prefix in ("callback", "authorize"):
        assert {path.split("/")[2] for path, _ in ops if path.startswith(f"/{prefix}/")} == third_party
    callback, authorize = "/callback/wechat_component/{appid}", "/authorize/wechat_component/{appid}"
    pushed = ops[(callback, "post")]
    assert pushed["security"] == [] and set(pushed["requestBody"]["content"]) == {"application/octet-stream"}
    assert set(pushed["responses"]["200"]["content"]) == {"text/plain"}
    assert set(pushed["responses"]) == {"200", "400", "401", "404", "405", "413", "500", "502", "503", "504"}
    # A signature, not a key: no WWW-Authenticate on its 401.
    assert "WWW-Authenticate" not in resolve(doc, pushed["responses"]["401"])["headers"]
    assert "405" in ops[(callback, "get")]["responses"] and "echostr" in params(doc, ops[(callback, "get")])
    page = ops[(authorize, "get")]
    query = params(doc, page)
    assert query["redirect_uri"]["required"] is True and query["redirect_uri"]["in"] == "query"
    assert {"redirect_uri", "auth_type", "biz_appid"} <= set(query)
    assert resolve(doc, page["responses"]["200"]["content"]["application/json"]["schema"])["properties"][
        "data"]["format"] == "uri"
    exchange = ops[(authorize, "post")]
    body = resolve(doc, exchange["requestBody"]["content"]["application/json"]["schema"])
    assert body["required"] == ["auth_code"]
    for op in (page, exchange):
        assert op["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}] and "401" in op["responses"]

    # DingTalk posts JSON signed as `signature` (or `msg_signature`) and waits for an encrypted JSON answer.
    ding = ops[("/callback/dingtalk_suite/{appid}", "post")]
    assert {"signature", "msg_signature", "timestamp", "nonce"} <= set(params(doc, ding))
    answer = ding["responses"]["200"]["content"]
    assert set(answer) == {"application/json"}
    assert answer["application/json"]["schema"]["required"] == ["msg_signature", "timeStamp", "nonce", "encrypt"]


@pytest.mark.parametrize("platform", ["wechat", "wecom", "alipay", "dingtalk", "feishu"])
def test_the_declared_appid_form_is_what_the_service_accepts(make_app: Any, platform: str) -> None:
    app = make_app(auth_required=True)
    service = app.extensions["pighand"].service
    doc = document(app)
    schema = params(doc, operations(doc)[(token_paths(platform)[0], "get")])["appid"]["schema"]
    pattern = re.compile(schema["pattern"])

    @hypothesis_settings(max_examples=150, deadline=None)
    # fullmatch: a JSON Schema pattern's `$` is ECMAScript's, which no trailing newline satisfies.
    @given(valid=st.from_regex(pattern, fullmatch=True).filter(lambda s: len(s) <= schema["maxLength"]),
           other=st.text(alphabet=APPID_ALPHABET, min_size=1, max_size=schema["maxLength"]))
    def agree(valid: str, other: str) -> None:
        service.key(platform, valid)  # no BadRequest
        try:
            service.key(platform, other)
            accepted = True
        except BadRequest:
            accepted = False
        assert accepted == bool(pattern.search(other)), other

    agree()


@pytest.mark.parametrize("auth_required", [True, False])
def test_every_json_answer_is_a_plain_envelope_whose_code_is_its_status(make_app: Any,
                                                                         auth_required: bool) -> None:
    doc = document(make_app(auth_required=auth_required))
    for (path, method), op in operations(doc).items():
        for status, response in op["responses"].items():
            response = resolve(doc, response)
            assert "X-Request-Id" in response["headers"], (path, method, status)
            json_body = response["content"].get("application/json")
            # The document itself, and what a platform's callback must be answered with (DingTalk's
            # encrypted `success`): not envelopes.
            if json_body is None or path == "/openapi.json" or (path.startswith("/callback/") and status == "200"):
                continue
            schema = resolve(doc, json_body["schema"])
            if path.startswith(("/callback/feishu_store/", "/callback/lark_store/")) and status == "200":
                # What Feishu reads back (its challenge), not the envelope.
                assert set(schema["properties"]) == {"challenge", "msg"} and schema["additionalProperties"] is False
                continue
            # One flat object per answer: generators cannot merge allOf parts that narrow a type with const.
            assert not {"allOf", "anyOf", "oneOf"} & set(schema), (path, method, status)
            assert schema["type"] == "object" and schema["additionalProperties"] is False
            assert ENVELOPE_FIELDS <= set(schema["required"]) and ENVELOPE_FIELDS <= set(schema["properties"])
            fields = schema["properties"]
            assert fields["code"] == {"type": "integer", "const": int(status), "description": "The HTTP status."}
            if status == "200":
                assert fields["data"]["type"] == "string" and fields["error"]["const"] == ""
            else:
                assert fields["data"] == {"type": "null"} and fields["error"]["minLength"] == 1
                assert "expires_in" not in fields


def test_token_answers_declare_how_long_the_hub_keeps_serving_them(make_app: Any) -> None:
    doc = document(make_app(auth_required=True))
    ops = operations(doc)
    token = doc["components"]["schemas"]["Token"]
    assert token["properties"]["expires_in"] == {
        "type": "integer", "minimum": 0, "description": "Whole seconds the hub will keep serving this value."}
    assert token["properties"]["data"] == {"type": "string", "minLength": 1, "description": "The token or ticket."}
    assert "expires_in" in token["required"]
    answers = [path for (path, method), op in ops.items()
               if op["responses"]["200"]["content"].get("application/json", {}).get("schema")
               == {"$ref": "#/components/schemas/Token"}]
    assert {route_of(path) for path in answers} == {TOKEN_ROUTE, TICKET_ROUTE}
    assert "/healthz" not in answers


def test_each_operation_lists_the_statuses_it_can_answer(make_app: Any) -> None:
    doc = document(make_app(auth_required=True))
    ops = operations(doc)
    token, ticket = token_paths("wechat")
    statuses = {key: set(op["responses"]) for key, op in ops.items()}
    for platform in ("wechat", "alipay", "wecom"):
        path = token_paths(platform)[0]
        assert statuses[(path, "get")] == {"200", "400", "401", "403", "404", "405", "500", "502", "503", "504"}
        assert statuses[(path, "put")] == {"200", "400", "401", "403", "404", "405", "413", "429", "500", "502",
                                           "503", "504"}
    assert statuses[(ticket, "get")] == {"200", "400", "401", "403", "404", "405", "429", "500", "502", "503",
                                         "504"}
    assert statuses[("/readyz", "get")] == {"200", "405", "500", "503"}
    assert statuses[("/", "get")] == {"200", "401", "405", "500", "503"}
    for path in ("/healthz", "/openapi.json"):
        assert statuses[(path, "get")] == {"200", "405", "500"}
    assert statuses[("/metrics", "get")] == {"200", "401", "403", "405", "500", "503"}
    assert set(ops[("/metrics", "get")]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(ops[("/", "get")]["responses"]["200"]["content"]) == {"text/html"}
    too_many = resolve(doc, ops[(token, "put")]["responses"]["429"])
    assert resolve(doc, too_many["headers"]["Retry-After"])["required"] is True
    assert "Retry-After" in resolve(doc, ops[(token, "get")]["responses"]["502"])["headers"]
    assert "Retry-After" in resolve(doc, ops[(token, "get")]["responses"]["503"])["headers"]
    not_allowed = resolve(doc, ops[(token, "get")]["responses"]["405"])
    assert resolve(doc, not_allowed["headers"]["Allow"])["required"] is True
    body = ops[(token, "put")]["requestBody"]
    assert body["required"] is False
    stale = resolve(doc, body["content"]["application/json"]["schema"])
    assert stale["properties"]["stale_token"]["type"] == "string"
    assert stale["properties"]["nowToken"]["type"] == "string"
    assert not stale.get("required")


def test_keys_are_asked_for_only_when_auth_is_required(make_app: Any) -> None:
    for auth_required in (True, False):
        doc = document(make_app(auth_required=auth_required))
        schemes = doc["components"]["securitySchemes"]
        assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "description": schemes["bearerAuth"]
                                         ["description"]}
        assert (schemes["apiKeyAuth"]["in"], schemes["apiKeyAuth"]["name"]) == ("header", "X-Api-Key")
        assert "security" not in doc
        for (path, _), op in operations(doc).items():
            # A platform cannot send a key: its callbacks are authenticated by their signature (401 if bad).
            signed = path.startswith("/callback/")
            keyed = auth_required and path not in NO_KEY_PATHS and not signed
            assert op["security"] == ([{"bearerAuth": []}, {"apiKeyAuth": []}] if keyed else []), path
            assert ("401" in op["responses"]) == (keyed or signed), path
        assert ("requires an API key" in doc["info"]["description"]) == auth_required


# -- the live API against the document ------------------------------------------------
def add_client(settings: dict[str, Any], name: str, *scopes: str) -> str:
    key = new_key()
    db = Database(sqlite_path=settings["sqlite_path"])
    SqlClients(db).add(Client(name, hash_key(key), scopes, time.time()))
    db.close()
    return key


# The proxy's operations are one handler whatever the platform: those of one platform stand for
# all (about 100 operations fewer, minutes off the suite on 2 cores).
FUZZED_PROXY_ONLY = r"^/proxy/(?!wechat/)"


@pytest.mark.timeout(420)
def test_schemathesis_finds_the_live_api_true_to_its_document(tmp_path: Path, wechat: FakeWeChat,
                                                               request: pytest.FixtureRequest) -> None:
    wechat.add_app(EXAMPLE_APPID, "example-secret")
    settings = storage("sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"), (EXAMPLE_APPID, "example-secret"))
    key = add_client(settings, "schemathesis", "*")
    reports = tmp_path / "schemathesis"
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    with Server(tmp_path, workers=2, auth_required=True, wechat_api_base=wechat.base_url,
                  is_enable_schedule=False, upstream_timeout=2, **settings) as server:
        token = requests.get(f"{server.base_url}/token/wechat/{EXAMPLE_APPID}",
                             headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert token.status_code == 200, server.log()
        calls_before = wechat.count()
        served = requests.get(f"{server.base_url}/openapi.json", timeout=10)
        assert served.status_code == 200 and served.headers["Content-Type"] == "application/json"
        live = served.json()
        valid_openapi_31(live)
        run = subprocess.run(
            [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
             "--config-file", str(config), "run",
             f"{server.base_url}/openapi.json",
             "--checks", ",".join(CHECKS),
             "--header", f"Authorization: Bearer {key}",
             "--phases", "examples,coverage,fuzzing",
             "--max-examples", "12",
             "--seed", "20261124",
             # One worker: with threads, CPython 3.11.7's ast.parse (which hypothesis calls to describe
             # the filters schemathesis builds) fails now and then with "AST constructor recursion
             # depth mismatch".
             "--workers", "1",
             "--exclude-path-regex", FUZZED_PROXY_ONLY,
             "--request-timeout", "15",
             "--report", "junit", "--report-dir", str(reports)],
            cwd=tmp_path, capture_output=True, text=True, timeout=400)
        log = server.log()
    assert run.returncode == 0, f"{run.stdout[-12000:]}\n{run.stderr[-3000:]}\n{log[-3000:]}"
    cases = ET.parse(next(reports.glob("*.xml"))).getroot().iter("testcase")
    tested = {case.get("name") for case in cases}
    # Schemathesis leaves out the operation serving the document itself.
    assert tested == {f"{method.upper()} {path}" for path, method in operations(live)
                      if path != "/openapi.json" and not re.match(FUZZED_PROXY_ONLY, path)}
    assert {"GET /proxy/wechat/{appid}/{path}", "POST /proxy/wechat/{appid}/{path}"} <= tested, tested
    assert {"GET /token/wechat/{appid}", "PUT /token/wechat/{appid}", "GET /token/alipay/{appid}",
            "GET /token/wecom/{appid}", "GET /ticket/wechat/{appid}/{ticket_type}"} <= tested, tested
    # Positive cases reached the platform: the success paths were held to the document too.
    assert wechat.count() > calls_before
    assert key not in log


# -- a generated client ----------------------------------------------------------------
CLIENT_PACKAGE = "pighand_generated_client"


def generate_client(spec: dict[str, Any], folder: Path) -> str:
    """Run openapi-python-client on ``spec``; its output (which names every schema or
    response it had to leave out)."""
    (folder / "spec.json").write_text(json.dumps(spec))
    run = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(folder / "spec.json"),
         "--output-path", str(folder / CLIENT_PACKAGE), "--meta", "none", "--fail-on-warning"],
        cwd=folder, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output


@contextmanager
def imported_client(folder: Path) -> Iterator[Any]:
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(CLIENT_PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == CLIENT_PACKAGE or m.startswith(CLIENT_PACKAGE + ".")]:
            del sys.modules[name]


def test_a_client_generated_by_openapi_python_client_types_every_answer(tmp_path: Path, wechat: FakeWeChat,
                                                                        request: pytest.FixtureRequest) -> None:
    wechat.add_app(EXAMPLE_APPID, "example-secret")
    settings = storage("sqlite", tmp_path, request)
    seed(settings, (EXAMPLE_APPID, "example-secret"))
    key = add_client(settings, "generated", "*")
    with Server(tmp_path, workers=1, auth_required=True, wechat_api_base=wechat.base_url,
                is_enable_schedule=False, upstream_timeout=2, **settings) as server:
        spec = requests.get(f"{server.base_url}/openapi.json", timeout=10).json()
        output = generate_client(spec, tmp_path)
        # The generator names each schema or response it could not type, and still succeeds.
        assert "warning" not in output.lower() and "omitted" not in output.lower(), output
        with imported_client(tmp_path) as generated:
            from pighand_generated_client.api.tokens import get_wechat_ticket, get_wechat_token, refresh_wechat_token
            from pighand_generated_client.models import NotFound, StaleToken, Token, Unauthorized

            hints = get_type_hints(Token)
            assert (hints["code"], hints["data"]) == (Literal[200], str)
            assert hints["expires_in"] is int
            assert get_type_hints(NotFound)["error"] is str and "expires_in" not in get_type_hints(NotFound)

            client = generated.AuthenticatedClient(base_url=server.base_url, token=key,
                                                   raise_on_unexpected_status=True, timeout=httpx.Timeout(10))
            with client:
                first = get_wechat_token.sync_detailed(EXAMPLE_APPID, client=client)
                assert first.status_code == 200
                token = first.parsed
                assert isinstance(token, Token) and token.code == 200 and token.error == ""
                assert isinstance(token.data, str) and token.data == wechat.current_token(EXAMPLE_APPID)
                assert isinstance(token.expires_in, int) and 0 < token.expires_in <= 7200

                replaced = refresh_wechat_token.sync_detailed(EXAMPLE_APPID, client=client,
                                                              body=StaleToken(stale_token=token.data)).parsed
                assert isinstance(replaced, Token) and replaced.code == 200
                assert replaced.data != token.data and replaced.data == wechat.current_token(EXAMPLE_APPID)
                # A caller that saw the same rejection later gets the replacement, with no platform call.
                calls = wechat.count()
                again = refresh_wechat_token.sync(EXAMPLE_APPID, client=client, stale_token=token.data)
                assert isinstance(again, Token) and again.data == replaced.data
                assert wechat.count() == calls

                ticket = get_wechat_ticket.sync(EXAMPLE_APPID, "jsapi", client=client)
                assert isinstance(ticket, Token) and ticket.data and ticket.data != replaced.data

                missing = get_wechat_token.sync_detailed("wx0000000000000000", client=client)
                assert missing.status_code == 404
                assert isinstance(missing.parsed, NotFound)
                assert missing.parsed.code == 404 and missing.parsed.data is None
                assert isinstance(missing.parsed.error, str) and "no credential" in missing.parsed.error

            with generated.AuthenticatedClient(base_url=server.base_url, token="pht_not-a-key",
                                               raise_on_unexpected_status=True) as stranger:
                refused = get_wechat_token.sync(EXAMPLE_APPID, client=stranger)
                assert isinstance(refused, Unauthorized) and refused.code == 401
        log = server.log()
    assert key not in log
