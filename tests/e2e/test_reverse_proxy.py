"""Behind a real nginx, with the README's configuration (deploy/nginx/
pighand-token.conf, only its ports changed): the audit log, the access log
and the loopback rule see the caller, not the proxy, and a forged
X-Forwarded-For is believed from nobody but a trusted proxy.

Callers come from 127.0.0.2 (a loopback address other than nginx's
127.0.0.1), so the caller and the proxy are told apart."""

from __future__ import annotations

import http.client
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pighand_token.config import Settings
from tests.conftest import ROOT, Server, _port_open, free_port, require_binary, stop_process
from tests.e2e.test_access_log import access_lines
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

APP = "wx_app_1"
EXAMPLE = ROOT / "deploy" / "nginx" / "pighand-token.conf"
CALLER = "127.0.0.2"
OUTSIDER = "198.51.100.20"


class Nginx:
    """A private nginx (``-p folder``, ``daemon off``) serving the example,
    its ports pointed at ``upstream_port`` and a free port of its own."""

    def __init__(self, folder: Path, upstream_port: int) -> None:
        self.binary = require_binary("nginx", "nginx-light")
        self.folder = folder
        self.port = free_port()
        example = EXAMPLE.read_text()
        assert example.count("server 127.0.0.1:3050;") == 1 and example.count("listen 80;") == 1
        site = example.replace("server 127.0.0.1:3050;", f"server 127.0.0.1:{upstream_port};") \
                      .replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        (folder / "pighand-token.conf").write_text(site)
        (folder / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/pighand-token.conf;
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        self.proc = subprocess.Popen([self.binary, "-p", str(self.folder), "-c", str(self.folder / "nginx.conf"),
                                      "-e", str(self.folder / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.error_log()}")
            time.sleep(0.05)
        return self

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def behind_nginx(tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> Iterator[Any]:
    """behind_nginx(trusted_proxies) -> (server, nginx), both started."""
    started: list[Any] = []

    def start(trusted_proxies: str) -> tuple[Server, Nginx]:
        settings = storage("sqlite", tmp_path, request)
        seed(settings, (APP, "s3cr3t-wx-1"))
        # classic: WeChat's stable endpoint allows one forced refresh per 30 s.
        server = Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, wechat_token_mode="classic",
                        is_enable_schedule=False, log_level="info", trusted_proxies=trusted_proxies, **settings)
        started.append(server.start())
        folder = tmp_path / "nginx"
        folder.mkdir()
        nginx = Nginx(folder, server.port)
        started.append(nginx.start())
        return server, nginx

    yield start
    for process in reversed(started):
        process.stop()


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         source: str = CALLER) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own, from ``source``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        conn.request(method, path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def audited(server: Server) -> list[tuple[str, str, str]]:
    sqlite_path = server.env["PIGHAND_SQLITE_PATH"]
    with sqlite3.connect(sqlite_path) as db:
        rows = db.execute("SELECT remote_addr, request_id, outcome FROM audit_log WHERE action = 'token.refresh' "
                          "ORDER BY id").fetchall()
    return [tuple(row) for row in rows]


def token_lines(server: Server, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:
        lines = [x for x in access_lines(server) if x["route"] == "/token/<platform>/<appid>"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def connections_to(port: int) -> int:
    ss = require_binary("ss", "iproute2")
    out = subprocess.run([ss, "-Htn", "state", "established", "dst", f"127.0.0.1:{port}"], capture_output=True,
                         text=True, check=True).stdout
    return len(out.splitlines())


def test_through_nginx_the_logs_record_the_caller_and_forged_addresses_are_not_believed(
        behind_nginx: Any) -> None:
    server, nginx = behind_nginx("127.0.0.1")
    path = f"/token/wechat/{APP}"
    # Through nginx: the first GET from the platform, the second from the hot path, then a PUT.
    for _ in range(2):
        assert call(nginx.port, "GET", path)[0] == 200
    status, headers, _ = call(nginx.port, "PUT", path, {"X-Request-Id": "via-nginx-1"})
    assert status == 200 and headers["x-request-id"] == "via-nginx-1"
    # A caller naming someone else: nginx appends the caller's address, the server takes that.
    status, headers, _ = call(nginx.port, "PUT", path, {"X-Forwarded-For": f"{OUTSIDER}, 127.0.0.1"})
    assert status == 200 and re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # nginx's own id
    nginx_id = headers["x-request-id"]
    # Sent straight to the server from a peer that is not a trusted proxy: the headers are ignored.
    status, _, _ = call(server.port, "PUT", path, {"X-Forwarded-For": OUTSIDER, "X-Real-IP": OUTSIDER,
                                                   "X-Request-Id": "direct-1"})
    assert status == 200
    assert audited(server) == [(CALLER, "via-nginx-1", "ok"), (CALLER, nginx_id, "ok"), (CALLER, "direct-1", "ok")]

    lines = token_lines(server, 5)
    assert [(x["method"], x["tier"], x["remote_addr"]) for x in lines] == [
        ("GET", "platform", CALLER), ("GET", "memory", CALLER), ("PUT", "platform", CALLER),
        ("PUT", "platform", CALLER), ("PUT", "platform", CALLER)]


def test_the_loopback_rule_sees_the_caller_behind_nginx(behind_nginx: Any) -> None:
    # 127.0.0.2 stands for an outer balancer, trusted like nginx, that says
    # who its caller is: development's loopback-only rule must see that caller.
    server, nginx = behind_nginx("127.0.0.1,127.0.0.2")
    path = f"/token/wechat/{APP}"
    assert call(nginx.port, "GET", path)[0] == 200  # the balancer itself (loopback) is served
    for _ in range(2):  # the second time the token is cached (the hot path could answer)
        status, _, body = call(nginx.port, "GET", path, {"X-Forwarded-For": OUTSIDER})
        assert status == 403 and b"loopback" in body
    assert call(nginx.port, "PUT", path, {"X-Forwarded-For": OUTSIDER})[0] == 403
    assert [x["remote_addr"] for x in token_lines(server, 4)] == [CALLER, OUTSIDER, OUTSIDER, OUTSIDER]


def upstream_idle_s() -> int:
    """The example's keepalive_timeout to the server, in seconds."""
    upstream = re.search(r"upstream pighand_token \{(.*?)\}", EXAMPLE.read_text(), re.S)
    idle = re.search(r"keepalive_timeout (\d+)s;", upstream.group(1)) if upstream else None
    assert idle is not None, "the example's upstream block sets keepalive_timeout in seconds"
    return int(idle.group(1))


def test_nginx_reuses_its_connection_to_the_server_and_closes_it_first(behind_nginx: Any) -> None:
    # The server closes a connection idle for http_header_timeout; nginx must
    # give up first, or it may send a request down a connection being closed.
    assert upstream_idle_s() < Settings().http_header_timeout
    server, nginx = behind_nginx("127.0.0.1")
    for _ in range(3):
        assert call(nginx.port, "GET", f"/token/wechat/{APP}")[0] == 200
    assert connections_to(server.port) == 1
    time.sleep(upstream_idle_s() + 1)  # still within the server's own idle limit
    assert connections_to(server.port) == 0
    assert call(nginx.port, "GET", f"/token/wechat/{APP}")[0] == 200


def test_the_readme_shows_the_tested_example() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"```nginx\n{EXAMPLE.read_text().rstrip()}\n```" in readme
