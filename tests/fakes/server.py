"""Reusable base for fake platform HTTP servers used in tests.

A subclass declares handlers with ``@route(method, path)``; each handler takes a
:class:`Request` and returns ``(status, body)`` or ``(status, body, headers)``.
The base takes care of serving on loopback, the call log, a fake clock and
fault injection (HTTP errors, platform errcodes, delays).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Call",
    "FakePlatform",
    "Fault",
    "Handler",
    "Reply",
    "Request",
    "route",
]

HOST = "127.0.0.1"

Reply = tuple[int, Any] | tuple[int, Any, Mapping[str, str]]
Handler = Callable[["Request"], Reply]
Call = dict[str, Any]

_F = TypeVar("_F", bound=Callable[..., Any])
_ROUTES_ATTR = "_fake_routes"


def route(method: str, path: str) -> Callable[[_F], _F]:
    """Mark a method of a FakePlatform subclass as the handler for (method, path)."""

    def mark(fn: _F) -> _F:
        routes: list[tuple[str, str]] = fn.__dict__.setdefault(_ROUTES_ATTR, [])
        routes.append((method.upper(), path))
        return fn

    return mark


def _first_values(pairs: Mapping[str, list[str]]) -> dict[str, str]:
    return {key: values[0] for key, values in pairs.items() if values}


@dataclass
class Request:
    """One parsed incoming HTTP request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # keys lower-cased
    body: bytes
    client_ip: str
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is empty or not JSON."""
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; {} for anything else (form body, array, garbage)."""
        data = self.json()
        return data if isinstance(data, dict) else {}

    def form(self) -> dict[str, str]:
        """The body parsed as application/x-www-form-urlencoded (first value per key)."""
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return _first_values(parse_qs(text, keep_blank_values=True))

    def note(self, **fields: Any) -> None:
        """Add fields to this call's record in the call log."""
        self.notes.update(fields)


@dataclass
class Fault:
    """A pending injected failure: answers the next `remaining` matching calls."""

    remaining: int
    status: int
    body: Any
    kind: str  # "status" or "errcode"
    path: str | None = None

    def matches(self, path: str) -> bool:
        return self.remaining > 0 and (self.path is None or self.path == path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The stdlib default backlog of 5 drops SYNs under bursts (1 s client retransmit).
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes its keep-alive connection (wrk at the end of
        # a run) is not a handler error; anything else is printed as before.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], platform: FakePlatform) -> None:
        self.platform = platform
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)


class _RequestHandler(BaseHTTPRequestHandler):
    # Keep-alive keeps benchmark and retry loops cheap; stop() closes open connections.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, delayed ACKs add ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        request = Request(
            method=self.command.upper(),
            path=split.path,
            query=_first_values(parse_qs(split.query, keep_blank_values=True)),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=self._read_body(),
            client_ip=self.client_address[0],
        )
        status, body, headers = self.server.platform._serve(request)
        self._send(status, body, headers)

    def _send(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        if body is None:
            payload, content_type = b"", "text/plain; charset=utf-8"
        elif isinstance(body, bytes):
            payload, content_type = body, "application/octet-stream"
        elif isinstance(body, str):
            payload, content_type = body.encode("utf-8"), "text/plain; charset=utf-8"
        else:
            payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
            content_type = "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        if self.server.platform.stopping:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class FakePlatform:
    """Base of all fake platforms: loopback HTTP server, call log, clock, faults.

    Subclasses declare handlers with ``@route``; handlers run one at a time under
    ``self.lock`` so platform state needs no further locking (injected delays
    happen outside the lock, so slow calls still overlap).
    """

    #: Query/body keys that carry the caller's application id, tried in order.
    appid_keys: tuple[str, ...] = ("appid", "app_id", "appKey", "appkey", "corpid", "client_id")
    #: Keys of the platform's JSON error envelope (Feishu uses "code"/"msg").
    errcode_key: str = "errcode"
    errmsg_key: str = "errmsg"

    def __init__(self, *, port: int = 0) -> None:
        self.lock = threading.RLock()
        self.offset: float = 0.0
        self._frozen: float | None = None
        self.errors: list[str] = []  # tracebacks of handlers that raised
        self._requested_port = port
        self._tls: ssl.SSLContext | None = None
        self._calls: list[Call] = []
        self._faults: list[Fault] = []
        self._delay_s: float = 0.0
        self._routes: dict[tuple[str, str], Handler] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._collect_routes()

    # ----------------------------------------------------------------- lifecycle

    def serve_tls(self, context: ssl.SSLContext) -> Self:
        """Serve HTTPS with ``context`` (call before start)."""
        self._tls = context
        return self

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((HOST, self._requested_port), self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},  # stop() waits up to one poll interval
            name=f"{type(self).__name__}-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # also wakes calls sleeping in an injected delay
        server.shutdown()
        with server.connections_lock:
            open_connections = list(server.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"{'https' if self._tls is not None else 'http'}://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # --------------------------------------------------------------------- clock

    def now(self) -> float:
        """The fake platform's clock: wall time (or the frozen instant) plus `offset`."""
        frozen = self._frozen
        return (time.time() if frozen is None else frozen) + self.offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds

    def freeze(self) -> None:
        """Stop the clock at the current instant; only `advance()` moves it afterwards."""
        with self.lock:
            if self._frozen is None:
                self._frozen = time.time()

    def unfreeze(self) -> None:
        """Let the clock run again from where it stands (no jump)."""
        with self.lock:
            if self._frozen is not None:
                self.offset = self._frozen + self.offset - time.time()
                self._frozen = None

    # ------------------------------------------------------------------- routing

    def _collect_routes(self) -> None:
        for cls in reversed(type(self).__mro__):
            for name, attr in vars(cls).items():
                for method, path in getattr(attr, _ROUTES_ATTR, ()):
                    self._routes[(method, path)] = getattr(self, name)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        with self.lock:
            self._routes[(method.upper(), path)] = handler

    @property
    def paths(self) -> set[str]:
        return {path for _, path in self._routes}

    # --------------------------------------------------------------- call log

    @property
    def calls(self) -> list[Call]:
        """Snapshot of recorded calls, oldest first."""
        with self.lock:
            return [dict(call) for call in self._calls]

    def count(self, path: str | None = None, **filters: Any) -> int:
        """Number of recorded calls to `path` (any if None) whose fields equal `filters`."""
        return sum(1 for _ in self._matching(path, filters))

    def find(self, path: str | None = None, **filters: Any) -> list[Call]:
        return list(self._matching(path, filters))

    def last(self, path: str | None = None, **filters: Any) -> Call | None:
        found = self.find(path, **filters)
        return found[-1] if found else None

    def clear_calls(self) -> None:
        with self.lock:
            self._calls.clear()

    def _matching(self, path: str | None, filters: Mapping[str, Any]) -> Iterator[Call]:
        for call in self.calls:
            if path is not None and call["path"] != path:
                continue
            if all(call.get(key) == value for key, value in filters.items()):
                yield call

    # ---------------------------------------------------------- fault injection

    def fail_next(self, n: int = 1, status: int = 500, body: Any = None, *, path: str | None = None) -> None:
        """Answer the next `n` calls (to `path`, or any) with HTTP `status` and `body`."""
        if body is None:
            body = {"error": "injected fault", "status": status}
        with self.lock:
            self._faults.append(Fault(n, status, body, "status", path))

    def fail_with_errcode_next(self, n: int, errcode: int, errmsg: str = "", *, path: str | None = None) -> None:
        """Answer the next `n` calls with a platform JSON error (HTTP 200), e.g. -1 busy."""
        with self.lock:
            self._faults.append(Fault(n, 200, self.error_body(errcode, errmsg), "errcode", path))

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()
            self._delay_s = 0.0

    def delay(self, seconds: float) -> None:
        """Make every call sleep `seconds` before answering; 0 turns it off."""
        with self.lock:
            self._delay_s = max(0.0, float(seconds))

    def error_body(self, errcode: int, errmsg: str) -> dict[str, Any]:
        return {self.errcode_key: errcode, self.errmsg_key: errmsg}

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(path):
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
                return fault
        return None

    # ------------------------------------------------------ hooks for subclasses

    def extract_appid(self, request: Request) -> str | None:
        """The caller's app id, looked up in query, JSON body and form body."""
        sources: list[Mapping[str, Any]] = [request.query, request.json_object()]
        if request.content_type == "application/x-www-form-urlencoded":
            sources.append(request.form())
        for source in sources:
            for key in self.appid_keys:
                value = source.get(key)
                if value not in (None, ""):
                    return str(value)
        return None

    def call_fields(self, request: Request) -> dict[str, Any]:
        """Fields recorded for every call, including fault-injected ones."""
        return {"appid": self.extract_appid(request)}

    # ------------------------------------------------------------------ serving

    def _serve(self, request: Request) -> tuple[int, Any, Mapping[str, str]]:
        delay_s = self._delay_s
        if delay_s > 0:
            self._stopping.wait(delay_s)
        with self.lock:
            record: Call = {
                "time": self.now(),
                "method": request.method,
                "path": request.path,
                "client_ip": request.client_ip,
                # What a forward proxy on the way added (tests/fakes/forward_proxy.py).
                "via": request.headers.get("via"),
                "query": dict(request.query),
                "body": self._body_for_log(request),
                "fault": None,
            }
            headers: Mapping[str, str] = {}
            try:
                record.update(self.call_fields(request))
                fault = self._take_fault(request.path)
                if fault is not None:
                    status, body = fault.status, fault.body
                    record["fault"] = fault.kind
                else:
                    status, body, headers = self._route(request)
            except Exception:  # noqa: BLE001 - handler bugs become 500s
                self.errors.append(traceback.format_exc())
                status, body = 500, {"error": "fake handler raised", "path": request.path}
            record.update(request.notes)
            record["status"] = status
            record["errcode"] = body.get(self.errcode_key, 0) if status == 200 and isinstance(body, dict) else None
            self._calls.append(record)
            return status, body, headers

    @staticmethod
    def _body_for_log(request: Request) -> Any:
        if not request.body:
            return None
        if request.content_type == "application/x-www-form-urlencoded":
            return request.form()
        return request.json()

    def _route(self, request: Request) -> tuple[int, Any, Mapping[str, str]]:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self._routes):
                return 405, {"error": "method not allowed"}, {}
            return 404, {"error": "not found", "path": request.path}, {}
        reply = handler(request)
        if len(reply) == 3:
            return reply[0], reply[1], reply[2]
        return reply[0], reply[1], {}


def serve_until_stopped(fake: FakePlatform) -> int:
    """Run a fake in the foreground (``python -m tests.fakes.<platform>``):
    print its base URL, serve until SIGTERM or Ctrl-C."""
    import signal

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    fake.start()
    print(fake.base_url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0
