"""A small HTTP forward proxy on loopback that counts what passes.

It handles what an HTTP client sends to a forward proxy: absolute-form
requests (``GET http://host:port/path HTTP/1.1``), forwarded with a ``Via``
header added so the upstream can tell they came through it, and ``CONNECT
host:port`` tunnels (HTTPS), piped byte for byte. With ``credentials`` it
answers 407 to requests without the matching ``Proxy-Authorization``.
Every request is recorded: method, target host:port, and whether it was let
through.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

HOST = "127.0.0.1"
VIA = "1.1 pighand-test-proxy"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailers",
              "transfer-encoding", "upgrade"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, proxy: ForwardProxy) -> None:
        self.proxy = proxy
        super().__init__((HOST, proxy.requested_port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _authorized(self) -> bool:
        expected = self.server.proxy.credentials
        if expected is None:
            return True
        token = base64.b64encode(f"{expected[0]}:{expected[1]}".encode()).decode()
        return self.headers.get("Proxy-Authorization", "") == f"Basic {token}"

    def _refuse(self, status: int, reason: str, target: str) -> None:
        self.server.proxy.record(self.command, target, passed=False)
        body = reason.encode()
        self.send_response(status)
        if status == 407:
            self.send_header("Proxy-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_CONNECT(self) -> None:
        target = self.path
        if not self._authorized():
            self._refuse(407, "proxy authentication required", target)
            return
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        except (OSError, ValueError):
            self._refuse(502, "cannot reach the target", target)
            return
        self.server.proxy.record("CONNECT", target, passed=True)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        client = self.connection
        try:
            sockets = [client, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    break
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            pass
        finally:
            upstream.close()
            self.close_connection = True

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        if split.scheme != "http" or not split.hostname:
            self._refuse(400, "absolute-form http:// request expected", self.path)
            return
        target = f"{split.hostname}:{split.port or 80}"
        if not self._authorized():
            self._refuse(407, "proxy authentication required", target)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Via"] = VIA
        path = split.path or "/"
        if split.query:
            path += "?" + split.query
        try:
            upstream = http.client.HTTPConnection(split.hostname, split.port or 80, timeout=10)
            upstream.request(self.command, path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        except OSError:
            self._refuse(502, "cannot reach the target", target)
            return
        self.server.proxy.record(self.command, target, passed=True)
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Via", VIA)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET


class ForwardProxy:
    """``with ForwardProxy() as proxy:`` serves on ``proxy.url``."""

    def __init__(self, *, credentials: tuple[str, str] | None = None, port: int = 0) -> None:
        self.credentials = credentials
        self.requested_port = port
        self._records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def record(self, method: str, target: str, *, passed: bool) -> None:
        with self._lock:
            self._records.append({"method": method, "target": target, "passed": passed})

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._records]

    def count(self, target: str | None = None, *, passed: bool = True) -> int:
        return sum(1 for r in self.records() if r["passed"] == passed and target in (None, r["target"]))

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The proxy's URL, with its credentials when it asks for them."""
        auth = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        return f"http://{auth}{HOST}:{self.port}"

    def start(self) -> Self:
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name="ForwardProxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
