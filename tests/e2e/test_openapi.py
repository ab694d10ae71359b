"""GET /openapi.json: a valid OpenAPI 3.1 document of every route the app
serves, and a schemathesis run against a live server holding the API to it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator

from pighand_token.adapters.sql import Database, SqlClients
from pighand_token.core.auth import hash_key, new_key
from pighand_token.core.domain import Client
from pighand_token.web.openapi import build_document
from tests.conftest import Server
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

EXAMPLE_APPID = "wx1234567890abcdef"
TOKEN_PATH = "/token/{platform}/{appid}"
TICKET_PATH = "/ticket/{platform}/{appid}/{ticket_type}"
NO_KEY_PATHS = ("/healthz", "/readyz", "/openapi.json")
ENVELOPE_REF = "#/components/schemas/Envelope"
# Not positive_data_acceptance: a platform's own appid form (WeCom <corpid>:<agentid>, Alipay
# <app_id>:<auth_app_id>) depends on the platform parameter, which a parameter schema cannot say,
# so schema-valid appids are refused with 400 on those platforms, as documented.
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "ignored_auth", "unsupported_method",
          "allow_header_conformance")


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


# -- the document ------------------------------------------------------------------
@pytest.mark.parametrize("auth_required", [True, False])
def test_document_is_served_without_a_key_and_is_valid_openapi_31(make_app: Any, auth_required: bool) -> None:
    doc = document(make_app(auth_required=auth_required))
    valid_openapi_31(doc)
    assert doc["info"]["title"] == "pighand-token"


@pytest.mark.parametrize("auth_required", [True, False])
def test_full_document_is_valid_for_any_settings(auth_required: bool) -> None:
    for platforms, tickets in ((["wechat", "feishu"], {"wechat": ("jsapi", "wx_card")}), (["feishu"], {})):
        doc = build_document(platforms=platforms, ticket_types=tickets, auth_required=auth_required)
        valid_openapi_31(doc)
        assert set(operations(doc)) == {
            (TOKEN_PATH, "get"), (TOKEN_PATH, "put"), (TICKET_PATH, "get"), ("/healthz", "get"),
            ("/readyz", "get"), ("/metrics", "get"), ("/", "get"), ("/openapi.json", "get")}


def test_document_lists_exactly_the_routes_flask_serves(make_app: Any) -> None:
    app = make_app(auth_required=True)
    routes = flask_routes(app)
    assert {(TOKEN_PATH, "get"), (TOKEN_PATH, "put"), (TICKET_PATH, "get"), ("/openapi.json", "get")} <= routes
    assert set(operations(document(app))) == routes


def test_path_parameters_follow_the_apps_platforms(make_app: Any) -> None:
    app = make_app(auth_required=True)
    doc = document(app)
    ops = operations(doc)
    platforms = app.extensions["pighand"].service.platforms()
    for key in ((TOKEN_PATH, "get"), (TOKEN_PATH, "put")):
        named = params(doc, ops[key])
        assert named["platform"]["schema"]["enum"] == platforms
        assert named["appid"]["schema"]["pattern"] == "^[A-Za-z0-9_.:-]{1,128}$"
        assert named["platform"]["required"] and named["appid"]["required"]
    ticket = params(doc, ops[(TICKET_PATH, "get")])
    assert ticket["platform"]["schema"]["enum"] == ["wechat"]
    assert ticket["ticket_type"]["schema"]["enum"] == ["jsapi", "wx_card"]


def test_envelope_is_defined_once_and_every_json_answer_refers_to_it(make_app: Any) -> None:
    doc = document(make_app(auth_required=True))
    envelope = doc["components"]["schemas"]["Envelope"]
    assert envelope["required"] == ["code", "data", "error"]
    assert envelope["properties"] == {"code": {"type": "integer", "minimum": 100, "maximum": 599},
                                      "data": {"type": ["string", "null"]}, "error": {"type": "string"}}

    def refers_to_envelope(schema: dict[str, Any]) -> bool:
        if schema.get("$ref") == ENVELOPE_REF:
            return True
        if "$ref" in schema:
            return refers_to_envelope(resolve(doc, schema))
        return any(refers_to_envelope(part) for part in schema.get("allOf", []))

    for (path, method), op in operations(doc).items():
        for status, response in op["responses"].items():
            response = resolve(doc, response)
            assert "X-Request-Id" in response["headers"], (path, method, status)
            json_body = response["content"].get("application/json")
            if json_body is not None and path != "/openapi.json":
                assert refers_to_envelope(json_body["schema"]), (path, method, status)


def test_each_operation_lists_the_statuses_it_can_answer(make_app: Any) -> None:
    doc = document(make_app(auth_required=True))
    ops = operations(doc)
    statuses = {key: set(op["responses"]) for key, op in ops.items()}
    assert statuses[(TOKEN_PATH, "get")] == {"200", "400", "401", "403", "404", "500", "502", "503", "504"}
    assert statuses[(TOKEN_PATH, "put")] == {"200", "400", "401", "403", "404", "413", "429", "500", "502", "503",
                                             "504"}
    assert statuses[(TICKET_PATH, "get")] == {"200", "400", "401", "403", "404", "429", "500", "502", "503", "504"}
    assert statuses[("/readyz", "get")] == {"200", "500", "503"}
    assert statuses[("/", "get")] == {"200", "401", "500", "503"}
    for path in ("/healthz", "/openapi.json"):
        assert statuses[(path, "get")] == {"200", "500"}
    assert statuses[("/metrics", "get")] == {"200", "401", "403", "500"}
    assert set(ops[("/metrics", "get")]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(ops[("/", "get")]["responses"]["200"]["content"]) == {"text/html"}
    too_many = resolve(doc, ops[(TOKEN_PATH, "put")]["responses"]["429"])
    assert resolve(doc, too_many["headers"]["Retry-After"])["required"] is True
    assert "Retry-After" in resolve(doc, ops[(TOKEN_PATH, "get")]["responses"]["502"])["headers"]
    body = ops[(TOKEN_PATH, "put")]["requestBody"]
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
            keyed = auth_required and path not in NO_KEY_PATHS
            assert op["security"] == ([{"bearerAuth": []}, {"apiKeyAuth": []}] if keyed else []), path
            assert ("401" in op["responses"]) == keyed, path
        assert ("requires an API key" in doc["info"]["description"]) == auth_required


# -- the live API against the document ------------------------------------------------
def add_client(settings: dict[str, Any], name: str, *scopes: str) -> str:
    key = new_key()
    db = Database(sqlite_path=settings["sqlite_path"])
    SqlClients(db).add(Client(name, hash_key(key), scopes, time.time()))
    db.close()
    return key


def test_schemathesis_finds_the_live_api_true_to_its_document(tmp_path: Path, wechat: FakeWeChat,
                                                               request: pytest.FixtureRequest) -> None:
    wechat.add_app(EXAMPLE_APPID, "example-secret")
    settings = storage("sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"), (EXAMPLE_APPID, "example-secret"))
    key = add_client(settings, "schemathesis", "*")
    reports = tmp_path / "schemathesis"
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
            [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run",
             f"{server.base_url}/openapi.json",
             "--checks", ",".join(CHECKS),
             "--header", f"Authorization: Bearer {key}",
             "--phases", "examples,coverage,fuzzing",
             "--max-examples", "25",
             "--seed", "20261124",
             "--workers", "2",
             "--request-timeout", "15",
             "--report", "junit", "--report-dir", str(reports)],
            cwd=tmp_path, capture_output=True, text=True, timeout=180)
        log = server.log()
    assert run.returncode == 0, f"{run.stdout[-12000:]}\n{run.stderr[-3000:]}\n{log[-3000:]}"
    cases = ET.parse(next(reports.glob("*.xml"))).getroot().iter("testcase")
    tested = {case.get("name") for case in cases}
    # Schemathesis leaves out the operation serving the document itself.
    assert tested == {f"{method.upper()} {path}" for path, method in operations(live) if path != "/openapi.json"}
    assert {"GET /token/{platform}/{appid}", "PUT /token/{platform}/{appid}",
            "GET /ticket/{platform}/{appid}/{ticket_type}"} <= tested, tested
    # Positive cases reached the platform: the success paths were held to the document too.
    assert wechat.count() > calls_before
    assert key not in log
