"""Shared fixtures: real MariaDB, PostgreSQL and Redis (started if they are
down), a fresh database / Redis key prefix per test, fake platforms over HTTP, and
server processes (the shipped one, and gunicorn)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import redis
import requests
from hypothesis import settings as hypothesis_settings

from pighand_token.app import create_app
from tests.fakes.wechat import FakeWeChat

ROOT = Path(__file__).resolve().parent.parent
PYCACHE = Path(tempfile.gettempdir()) / f"pighand-token-tests-pycache-{os.getuid()}"

# CI replays the same generated examples on every run, so a submission's
# result does not depend on the draw; elsewhere each run explores new ones.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
REDIS = {"host": "127.0.0.1", "port": 6379}
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def postgres_url(database: str) -> str:
    return f"postgresql://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{database}"


# -- services ------------------------------------------------------------------
def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _ensure(name: str, host: str, port: int, command: list[str]) -> None:
    """Start a missing local service; a service that cannot be had fails the
    test run (never a skip)."""
    if _port_open(host, port):
        return
    if shutil.which(command[0]) is None:
        pytest.fail(f"{name} is not running on {host}:{port} and {command[0]} is not installed")
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return
        time.sleep(0.2)
    pytest.fail(f"{name} is not running on {host}:{port} and could not be started")


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``: a test's server never outlives it."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def require_binary(name: str, debian_package: str) -> str:
    """The path of the program ``name``: installed from the Debian package
    ``debian_package`` when it is missing and the tests run as root, else the
    test fails saying how to install it (never a skip)."""
    found = shutil.which(name)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", debian_package]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed and is not installed: apt-get install -y {debian_package} (as root)")
    return found


@pytest.fixture(scope="session")
def mariadb_server() -> dict[str, Any]:
    _ensure("MariaDB", MYSQL["host"], MYSQL["port"],
            ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"])
    return MYSQL


@pytest.fixture(scope="session")
def postgres_server() -> dict[str, Any]:
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else ["15"]
    _ensure("PostgreSQL", POSTGRES["host"], int(POSTGRES["port"]),
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"])
    return POSTGRES


@pytest.fixture(scope="session")
def redis_server() -> dict[str, Any]:
    _ensure("Redis", REDIS["host"], REDIS["port"],
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
             "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"])
    return REDIS


@pytest.fixture
def mysql_db(mariadb_server: dict[str, Any]) -> Iterator[str]:
    """A database of this test's own, dropped afterwards."""
    name = f"pighand_t_{uuid.uuid4().hex[:12]}"
    conn = pymysql.connect(**mariadb_server, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def mysql_rows(database: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(**MYSQL, database=database, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def pg_db(postgres_server: dict[str, Any]) -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    name = f"pighand_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(**postgres_server, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(**postgres_server, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_rows(database: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(**POSTGRES, dbname=database, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


@pytest.fixture
def redis_prefix(redis_server: dict[str, Any]) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    client = redis.Redis(**redis_server)
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


class RedisClusterProcs:
    """A Redis Cluster of our own on loopback: ``masters`` masters with one
    replica each, a short node timeout so a replica takes over within a few
    seconds. Every process is ended by its pid in :meth:`stop`."""

    def __init__(self, folder: Path, masters: int = 3) -> None:
        self.folder = folder
        self.ports: list[int] = []
        while len(self.ports) < 2 * masters:
            port = free_port()
            # The cluster bus listens on port + 10000.
            if port + 10000 <= 65535 and port not in self.ports and _bindable(port + 10000):
                self.ports.append(port)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> RedisClusterProcs:
        for port in self.ports:
            folder = self.folder / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            self.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000", "--save", "",
                 "--appendonly", "no", "--dir", str(folder), "--logfile", str(folder / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports:
            _wait_port("127.0.0.1", port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(self.ready(port) for port in self.ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis cluster did not become ready")
            time.sleep(0.2)
        return self

    def ready(self, port: int) -> bool:
        return "cluster_state:ok" in str(self.client(port).execute_command("CLUSTER", "INFO"))

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=2)

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0], decode_responses=True)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


class PrivateMariaDB:
    """A mariadbd of a test's own on a free loopback port (grant tables
    skipped: root, no password), for freezing (SIGSTOP) and killing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateMariaDB:
        data = self.folder / "data"
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self.proc = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}", "--user=root", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.folder / 'mariadb.sock'}", "--skip-grant-tables",
             "--innodb-buffer-pool-size=16M", "--skip-log-bin", f"--log-error={self.folder / 'error.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port("127.0.0.1", self.port, timeout_s=30)
        return self

    def settings(self, database: str = "pighand") -> dict[str, Any]:
        return {"mysql_host": "127.0.0.1", "mysql_port": self.port, "mysql_username": "root",
                "mysql_password": "", "mysql_database": database}

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB(tmp_path / "mariadb")
    server.folder.mkdir()
    try:
        yield server.start()
    finally:
        server.stop()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_port(host: str, port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not _port_open(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A 3-master Redis Cluster (with replicas) shared by the session's tests,
    each of which uses a key prefix of its own."""
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_prefix() -> str:
    """A key prefix of this test's own on the session's cluster (which goes
    with the session; TTLs bound the keys till then)."""
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def redis_client(redis_server: dict[str, Any]) -> Iterator[redis.Redis]:
    client = redis.Redis(**redis_server, decode_responses=True)
    yield client
    client.close()


# -- fake platforms --------------------------------------------------------------
@pytest.fixture
def wechat() -> Iterator[FakeWeChat]:
    with FakeWeChat() as fake:
        fake.add_app("wx_app_1", "s3cr3t-wx-1")
        yield fake


# -- the service ---------------------------------------------------------------
# With Redis, SQL only backs it up (save_model auto): Redis over one SQL
# dialect stands for the others here; the cross-instance stampede
# (tests/e2e/test_cluster.py) runs Redis over each.
STORAGE_KINDS = ["sqlite", "mysql", "postgres", "redis+sqlite", "redis+mysql", "redis-cluster+sqlite"]


def storage_overrides(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings for one storage layout, with a fresh database / key prefix."""
    overrides: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    if "mysql" in kind:
        overrides.update(mysql_host=MYSQL["host"], mysql_port=MYSQL["port"], mysql_username=MYSQL["user"],
                         mysql_password=MYSQL["password"], mysql_database=request.getfixturevalue("mysql_db"))
    if "postgres" in kind:
        overrides.update(database_url=postgres_url(request.getfixturevalue("pg_db")))
    if "redis-cluster" in kind:
        overrides.update(redis_cluster_nodes=request.getfixturevalue("redis_cluster").nodes,
                         redis_key_prefix=request.getfixturevalue("redis_cluster_prefix"))
    elif "redis" in kind:
        overrides.update(redis_host=REDIS["host"], redis_port=REDIS["port"],
                         redis_key_prefix=request.getfixturevalue("redis_prefix"))
    return overrides


def app_overrides(wechat: FakeWeChat, **extra: Any) -> dict[str, Any]:
    # auth_required is off here; tests of authentication turn it on.
    return {"wechat_api_base": wechat.base_url, "is_enable_schedule": False, "upstream_timeout": 2,
            "log_level": "debug", "auth_required": False, **extra}


@pytest.fixture
def make_app(tmp_path: Path, request: pytest.FixtureRequest, wechat: FakeWeChat) -> Any:
    """make_app(kind="sqlite", **settings) -> a Flask app on that storage.

    Where the test runs with ``serving_path`` "served", the app's
    ``test_client()`` speaks HTTP to the shipped server on the same settings
    (see :func:`served`)."""
    def make(kind: str = "sqlite", **extra: Any) -> Any:
        overrides = {**storage_overrides(kind, request, tmp_path), **app_overrides(wechat, **extra)}
        return served(create_app(overrides=overrides), overrides, tmp_path)
    return make


SERVING_PATHS = ["fast", "flask", "served"]
# Over HTTP the stores are the same code as in process: the served path runs
# on one layout without Redis and one with it, not on every layout.
SERVED_KINDS = {"sqlite", "redis+mysql"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params is not None else {}
        if params.get("serving_path") == "served" and params.get("kind", "sqlite") not in SERVED_KINDS:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    # The longest first (servers and clusters, then what runs over HTTP, then
    # the rest), so xdist spreads them over its workers from the start and
    # the run does not end on one worker still busy with a cluster test.
    items[:] = sorted(kept, key=_run_order)


def _run_order(item: pytest.Item) -> int:
    path = Path(str(item.path)).relative_to(ROOT).as_posix()
    if path.startswith("tests/e2e/"):
        return 0
    params = getattr(item, "callspec", None)
    if params is not None and params.params.get("serving_path") == "served":
        return 1
    return 2 if path.startswith("tests/integration/") else 3
# The running test's serving path and request, set by serving_path().
_SERVING: dict[str, Any] = {}


@pytest.fixture(params=SERVING_PATHS)
def serving_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test against the hot path and against Flask alone in process,
    and over HTTP against the shipped server ("served"): apps the test makes
    with make_app() or served() then answer through ``pighand-token serve``."""
    monkeypatch.setenv("PIGHAND_FAST_PATH", "false" if request.param == "flask" else "true")
    _SERVING.update(path=request.param, request=request)
    yield str(request.param)
    _SERVING.clear()


def served(app: Any, overrides: dict[str, Any], log_dir: Path) -> Any:
    """``app`` as it is, or, where the test's ``serving_path`` is "served", an
    app whose ``test_client()`` is an HTTP client of ``pighand-token serve``
    started on the same settings (same stores, same encryption key). The
    in-process app stays for seeding and reading the stores."""
    if _SERVING.get("path") != "served":
        return app
    return ServedApp(app, overrides, _SERVING["request"], log_dir)


class ServedApp:
    def __init__(self, app: Any, overrides: dict[str, Any], request: pytest.FixtureRequest, log_dir: Path) -> None:
        self._app = app
        self._overrides = overrides
        self._request = request
        self._log_dir = log_dir
        self._server: Server | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app, name)

    def test_client(self) -> HttpClient:
        if self._server is None:
            settings = {k: v for k, v in self._overrides.items() if k not in ("host", "port")}
            settings.update(fast_path=True, workers=1, threads=4)
            server = Server(self._log_dir, **settings)
            self._request.addfinalizer(server.stop)
            self._server = server.start()
        return HttpClient(self._server.base_url)


class HttpResponse:
    """A requests response with the Flask test response's reading methods."""

    def __init__(self, response: requests.Response) -> None:
        self.raw = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.data = response.content

    def get_json(self) -> Any:
        return self.raw.json()

    @property
    def json(self) -> Any:
        return self.raw.json()

    def get_data(self, as_text: bool = False) -> Any:
        return self.raw.text if as_text else self.raw.content


class HttpClient:
    """The Flask test client's calls, over HTTP to a served instance."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()

    def open(self, path: str, method: str = "GET", *, headers: dict[str, str] | None = None, json: Any = None,
             data: bytes | str | None = None, content_type: str | None = None,
             query_string: dict[str, str] | None = None, environ_base: dict[str, str] | None = None) -> HttpResponse:
        if environ_base and environ_base.get("REMOTE_ADDR") not in (None, "127.0.0.1", "::1"):
            # A real connection comes from loopback: only the in-process
            # client can pretend to be another host.
            pytest.fail("a served request cannot come from another address; run this test in process only")
        headers = dict(headers or {})
        if content_type is not None:
            headers["Content-Type"] = content_type
        answer = self.session.request(method, self.base_url + path, headers=headers, json=json, data=data,
                                      params=query_string, timeout=30)
        return HttpResponse(answer)

    def get(self, path: str, **kwargs: Any) -> HttpResponse:
        return self.open(path, "GET", **kwargs)

    def put(self, path: str, **kwargs: Any) -> HttpResponse:
        return self.open(path, "PUT", **kwargs)

    def post(self, path: str, **kwargs: Any) -> HttpResponse:
        return self.open(path, "POST", **kwargs)

    def delete(self, path: str, **kwargs: Any) -> HttpResponse:
        return self.open(path, "DELETE", **kwargs)


# -- servers ------------------------------------------------------------------
# Ports for the servers the tests start (granian, redis-server, mariadbd,
# proxies): below the kernel's ephemeral range, so no client connection or
# port-0 listener can take one between free_port() and the server's bind,
# and a block of its own per xdist worker, so two workers never hand out the
# same port (granian listens with SO_REUSEPORT: two servers on one port would
# both start and split the callers). Within the block, ports go round in
# turn from a start of this run's own.
_PORTS_FROM, _PORTS_TO = 16000, 32000
_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_PORTS_PER_WORKER = (_PORTS_TO - _PORTS_FROM) // _WORKERS
_next_port = [os.getpid() % _PORTS_PER_WORKER]


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    block = _PORTS_FROM + (int(worker) if worker.isdigit() else 0) % _WORKERS * _PORTS_PER_WORKER
    for _ in range(_PORTS_PER_WORKER):
        port = block + _next_port[0] % _PORTS_PER_WORKER
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or its last connections still in TIME_WAIT
            return port
    raise RuntimeError(f"no free port in {block}-{block + _PORTS_PER_WORKER - 1}")


def clean_env(**settings: Any) -> dict[str, str]:
    """os.environ without PIGHAND_* variables, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGHAND_")}
    env["PIGHAND_ENV"] = "testing"
    # Each command and worker is a new interpreter: where the environment
    # forbids bytecode next to the sources, each would compile every module
    # again (about 0.1 s a start); they share a cache outside the tree instead.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    for name, value in settings.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"PIGHAND_{name.upper()}"] = str(value)
    return env


class Server:
    """The shipped server, ``pighand-token serve`` (granian), in its own process."""

    name = "serve"

    def __init__(self, log_dir: Path, *, workers: int = 2, threads: int = 4, **settings: Any) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        settings.setdefault("auth_required", False)
        self.workers = workers
        self.env = clean_env(host="127.0.0.1", port=self.port, workers=workers, threads=threads, **settings)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pighand_token", "serve"]

    def booted(self, workers_seen: set[str]) -> bool:
        """Every worker is serving (the first answer alone may come while the
        others are still importing): each has answered a /healthz. A worker
        is told apart by the prefix of the request ids it gives."""
        return len(workers_seen) >= self.workers

    def start(self, timeout_s: float = 30) -> Server:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                # A new connection each time, which the server closes: the
                # kernel hands each to one of the workers, and none is left
                # open for a test counting the server's connections.
                answer = requests.get(self.base_url + "/healthz", timeout=5, headers={"Connection": "close"})
                seen.add(answer.headers.get("X-Request-Id", "")[:12])
                if self.booted(seen):
                    return self
                time.sleep(0.02)
            except requests.RequestException:  # not listening yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout_s} s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        assert self.proc is not None
        # -ww: the whole command line, however narrow the terminal ps thinks it writes to.
        out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], capture_output=True,
                             text=True)
        pids = []
        for line in out.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            if "resource_tracker" not in args:
                pids.append(int(pid))
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 15)

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Gunicorn(Server):
    """gunicorn with its stock gthread worker and our gunicorn.conf.py."""

    name = "gunicorn"

    def booted(self, workers_seen: set[str]) -> bool:
        return True  # its workers share one listening socket: one still booting takes no caller

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]


def run_cli(*args: str, env: dict[str, str], input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``pighand-token ARGS`` in its own process (``python3 -m pighand_token`` is the same command)."""
    return subprocess.run([sys.executable, "-m", "pighand_token", *args], cwd=ROOT, env=env,
                          input=input, capture_output=True, text=True, timeout=timeout)


def run_flask(*args: str, env: dict[str, str], input: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``flask --app wsgi ARGS``: the same commands, the way they were run before ``pighand-token``."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          input=input, capture_output=True, text=True, timeout=timeout)
