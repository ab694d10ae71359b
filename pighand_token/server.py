"""``pighand-token serve``: granian running the app, configured from the settings.

granian's HTTP/1 handling is Rust: connections, keep-alive, header parsing
and the header-read timeout cost no Python thread, so a slow or idle caller
ties up nothing a request needs. Each worker process builds its own app,
starts its refresh timer and its cache listener, and answers requests on a
pool of Python threads (a slow platform call blocks one thread, not the
worker).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import multiprocessing
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .core.auth import is_loopback
from .core.egress import redact_url
from .core.errors import SettingsError

# Chosen by measurement on 2 cores (wrk -t1 -c16 -d5s on a cached GET,
# medians of 3 runs): one worker per core is best (2 workers 25-28k req/s,
# 1 worker 17-24k, 3 workers 20-23k). Threads from 4 to 32 per worker serve
# cached GETs alike (within the +-3k run-to-run noise, p99 about 5 ms); 64
# is a little slower. What threads buy is room for slow platform calls: each
# holds one for up to the upstream budget, and the kernel may hash several
# onto one worker. With 5 cold appids on a platform taking 3 s, 1 worker x 4
# threads put the cached GETs' p99 at 2.9 s; with 12, 2 x 8 did in one run
# of three; 2 x 16 kept it under 12 ms in every run.
DEFAULT_THREADS = 16
MAX_DEFAULT_WORKERS = 8
# Connections one worker holds open at once. granian counts connections, not
# requests, against this limit (its "backpressure"), idle keep-alive ones and
# callers still sending their headers included; each costs a few KB of Rust,
# no thread. Kept far above threads so a pool of idle keep-alive clients or a
# slowloris cannot fill it (a full worker stops accepting: every new caller
# hashed to its socket waits), and below the open-files limit.
MAX_CONNECTIONS_PER_WORKER = 1024
# Stop: in-flight requests get this long to finish after SIGTERM/SIGINT,
# then the workers are killed (the whole stop stays within 10 s).
STOP_TIMEOUT_S = 8

# A replacement worker (worker_lifetime) starts before the one it replaces
# stops: it waits this long for that worker's CPU.
PIN_WAIT_S = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    workers: int
    threads: int
    header_timeout_ms: int
    worker_lifetime_s: int | None


def options(settings: Settings) -> ServeOptions:
    """What granian is run with; raises SettingsError for a bind that would
    hand out tokens to anyone."""
    check_bind(settings)
    return ServeOptions(
        host=settings.host.strip("[]"), port=settings.port,
        workers=settings.workers or default_workers(),
        threads=settings.threads or DEFAULT_THREADS,
        header_timeout_ms=max(1, round(settings.http_header_timeout * 1000)),
        worker_lifetime_s=settings.worker_lifetime or None,
    )


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


def max_connections() -> int:
    # Half the open-files limit at most: the rest is the worker's own
    # (database, Redis and platform connections, logs).
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_PER_WORKER
    return max(64, min(MAX_CONNECTIONS_PER_WORKER, soft // 2))


def check_bind(settings: Settings) -> None:
    if not settings.auth_required and not is_loopback(settings.host.strip("[]")):
        # Without keys anyone who reaches the port gets every token.
        raise SettingsError(
            f"host={settings.host!r} is invalid: with auth_required=false the server binds to loopback only "
            "(127.0.0.1, ::1); set auth_required=true to serve other hosts")


def check_port_free(host: str, port: int) -> None:
    """SettingsError when ``host:port`` cannot be listened on, above all
    when something already listens there.

    granian listens with SO_REUSEPORT: a second server on a port held by
    another one (an old instance still running, another service of the same
    user) would start without a word and the kernel would split the callers
    between the two. A plain bind fails with EADDRINUSE in that case."""
    host = host.strip("[]")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SettingsError(f"host={host!r} is invalid: {exc.strerror}") from None
    try:
        with socket.socket(family, kind, proto) as probe:
            # A port whose last connections are in TIME_WAIT is free to listen on.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(f"port={port} is invalid: {where} is already in use; stop what listens there "
                                "or choose another port") from None
        raise SettingsError(f"host={host!r} / port={port} are invalid: cannot listen on {where} "
                            f"({exc.strerror})") from None


def check_stored_secrets(settings: Settings) -> None:
    """Before any worker starts: SettingsError when ``encryption_key`` opens
    none of the stored secrets (every miss would be a 500 otherwise). A
    store that is down does not stop the start; /readyz reports it."""
    from .bootstrap import bootstrap
    from .core.errors import Unavailable

    container = bootstrap(settings)
    try:
        problem = container.key_problem()
    except Unavailable as exc:
        log.warning("encryption_key not checked against the stored secrets: %s", exc.message)
        return
    finally:
        container.db.close()
    if problem is not None:
        raise SettingsError(problem)


def metrics_dir() -> tuple[str, bool]:
    """The folder every worker writes its metric samples to (prometheus-client's
    multiprocess mode), emptied of a previous run's samples; True if it was
    made here (and is removed at exit)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return tempfile.mkdtemp(prefix="pighand-metrics-"), True
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    return path, False


def serve(settings: Settings) -> None:
    """Run granian until SIGTERM/SIGINT; returns when it has stopped."""
    from granian.http import HTTP1Settings
    from granian.server import Server

    opts = options(settings)
    path, own = metrics_dir()
    # Set before any worker imports prometheus_client (it picks its
    # multiprocess value class at import).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        check_port_free(opts.host, opts.port)
        check_stored_secrets(settings)
    except SettingsError:
        if own:
            shutil.rmtree(path, ignore_errors=True)
        raise
    # Workers start as fresh interpreters, not forks: nothing this process
    # imported or opened (settings files, a half-built client) leaks into
    # them, and each imports prometheus_client with the folder already set.
    multiprocessing.set_start_method("spawn", force=True)
    server = Server("pighand_token.server:worker_app", **granian_options(opts, settings.log_level))
    # What granian holds, not what was asked: the line shows the settings arrived.
    h1 = server.http1_settings or HTTP1Settings()
    log.info("serving on %s:%d: %d workers x %d threads, up to %d connections each, header read timeout %g s, "
             "worker lifetime %s", server.bind_addr, server.bind_port, server.workers, server.blocking_threads,
             server.backpressure, h1.header_read_timeout / 1000,
             f"{server.workers_lifetime} s" if server.workers_lifetime else "unlimited")
    if settings.platform_http_proxy:
        log.info("platform calls go through platform_http_proxy %s%s", redact_url(settings.platform_http_proxy),
                 f", except to {', '.join(settings.no_proxy)}" if settings.no_proxy else "")
    if settings.redis_compat:
        log.info("WeChat/WeCom tokens and tickets are also written under the Redis keys of %s",
                 ", ".join(settings.redis_compat))
    try:
        server.serve()
    finally:
        if own:
            shutil.rmtree(path, ignore_errors=True)


def granian_options(opts: ServeOptions, log_level: str) -> dict[str, Any]:
    """granian's Server arguments for these options."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    return dict(
        factory=True,
        interface=Interfaces.WSGI,
        address=opts.host,
        port=opts.port,
        workers=opts.workers,
        blocking_threads=opts.threads,
        backpressure=max_connections(),
        http1_settings=HTTP1Settings(keep_alive=True, header_read_timeout=opts.header_timeout_ms),
        websockets=False,
        # A worker that dies is replaced at once. granian gives up (and exits
        # 1, for the supervisor to restart it) when the same worker dies again
        # within 5.5 s of being replaced: a crash loop.
        respawn_failed_workers=True,
        respawn_interval=1.0,
        workers_lifetime=opts.worker_lifetime_s,
        workers_kill_timeout=STOP_TIMEOUT_S,
        log_enabled=True,
        log_level=_granian_level(log_level),
        log_dictconfig=_granian_logging(hide_threads_warning=opts.threads == DEFAULT_THREADS),
        log_access=False,  # ours is the JSON access line (logs.py)
    )


def worker_app() -> Any:
    """Run by granian in each worker process: the app, its scheduler and its
    cache listener."""
    from .app import create_app, start_background

    try:
        app = create_app()
    except SettingsError as exc:
        print(f"pighand-token: bad setting: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    start_background(app)
    if app.extensions["pighand"].settings.cpu_affinity:
        pin_to_own_cpu(app.extensions["pighand"].settings)
    # granian copies os.environ into every request's WSGI environ: keep the
    # settings (keys, passwords) out of it now that they have been read.
    for name in [n for n in os.environ if n.startswith("PIGHAND_")]:
        del os.environ[name]
    return app


# The slot lock a worker holds for its life (the kernel frees it when the
# worker dies, for its replacement).
_CPU_SLOT: list[Any] = []


def pin_to_own_cpu(settings: Settings) -> int | None:
    """(granian has no CPU-affinity option; this is the stdlib's
    sched_setaffinity on each thread, from the worker's own factory.)

    Pin this served worker (each of its threads; threads it starts later
    inherit it) to one CPU of those the process may use, one no sibling holds,
    when there are no more workers than CPUs. Returns the CPU, or None if it
    is not pinned now (too many workers, or a replacement waiting, in the
    background, for the CPU of the worker it replaces).

    Measured on 2 cores (bench/, ours_inproc against ours_inproc_unpinned):
    unpinned workers served 0.58x the requests per second with twice the
    p99; the kernel moves their threads between cores at every hand-over
    between granian's Rust threads and the Python thread answering."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # per served run: serve() made or emptied it
    cpus = sorted(os.sched_getaffinity(0))
    if not folder or (settings.workers or default_workers()) > len(cpus):
        return None
    cpu = _take_cpu(folder, cpus)
    if cpu is None:
        threading.Thread(target=_wait_for_cpu, args=(folder, cpus), name="pighand-cpu-pin", daemon=True).start()
    return cpu


def _take_cpu(folder: str, cpus: list[int]) -> int | None:
    for cpu in cpus:
        handle = open(os.path.join(folder, f"cpu-{cpu}.lock"), "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _CPU_SLOT.append(handle)
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(int(tid), {cpu})
        log.info("worker %d pinned to CPU %d", os.getpid(), cpu)
        return cpu
    return None


def _wait_for_cpu(folder: str, cpus: list[int]) -> None:
    deadline = time.monotonic() + PIN_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if _take_cpu(folder, cpus) is not None:
            return


def _granian_level(level: str) -> Any:
    from granian.log import LogLevels

    # granian's own lines (start, stop, respawn) at info even when ours are
    # at debug: its debug output is per connection.
    return LogLevels(level if level != "debug" else "info")


def _granian_logging(*, hide_threads_warning: bool = False) -> dict[str, Any]:
    """granian's own log lines as our JSON lines, on stderr."""
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    filters: dict[str, Any] = {}
    if hide_threads_warning:
        # granian warns at every start when threads > 2 x cores + 1; the
        # default is above that on purpose (see DEFAULT_THREADS).
        filters["threads"] = {"()": "pighand_token.server.HideMessage",
                              "start": "Configuration allows spawning up to"}
        handler["filters"] = ["threads"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "pighand_token.logs.JsonFormatter"}},
        "filters": filters,
        "handlers": {"stderr": handler},
        "loggers": {"_granian": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    __name__: {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    "granian.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }


class HideMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)
