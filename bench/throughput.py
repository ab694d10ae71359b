"""Throughput of a cached ``GET /token/<platform>/<appid>``: ours on the
shipped server and on gunicorn, beside bare Flask apps and nginx doing the
least possible work. See bench/README.md; run with ``python -m bench``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    BENCH_DIR,
    BenchError,
    Server,
    WrkResult,
    base_env,
    ensure_tool,
    free_port,
    http_get,
    measured_run,
    run_wrk,
    running,
    wait_quiet,
)
from bench.ours import Store, envelope_data, gunicorn_server, shipped_server, wait_all_workers

APPID = "wx_bench_1"
SECRET = "bench-secret-1"
TOKEN_PATH = f"/token/wechat/{APPID}"
WARM_S = 1
# --threads 1: gunicorn quietly runs gthread instead of sync whenever
# threads > 1, so "-k sync" alone would not promise sync workers.
SYNC_FLAGS = ["-w", "2", "-k", "sync", "--threads", "1"]
NGINX_WORKERS = 2
CONSTANT_BODY = '{"code":200,"data":"constant","error":""}'


@dataclass
class Context:
    """What the throughput scenarios share within one run."""

    tmp: Path
    store: Store
    redis_settings: dict[str, str]  # PIGHAND_REDIS_* for the Redis path
    redis_pid: int
    bare_key: str
    bare_value: str
    token: str = ""


@dataclass(frozen=True)
class Scenario:
    key: str
    server: str  # what serves it, for the table
    make: Callable[[Context], Server]
    ours: bool = False
    redis: bool = False
    worker_class: str = ""  # gunicorn's, checked from its log


def _bare(target: str, redis: bool) -> Callable[[Context], Server]:
    def make(ctx: Context) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", *SYNC_FLAGS, "--log-level", "info", "-b", f"127.0.0.1:{port}",
                target]
        env = base_env(BENCH_REDIS_HOST="127.0.0.1", BENCH_REDIS_PORT="6379", BENCH_REDIS_KEY=ctx.bare_key) \
            if redis else base_env()
        # From bench/: gunicorn reads ./gunicorn.conf.py by default, and the
        # repository root's would turn the bare apps into our service.
        return Server(f"bare_{'redis' if redis else 'constant'}", argv, kind="gunicorn", workers=2, env=env,
                      cwd=BENCH_DIR, port=port, log_dir=ctx.tmp)
    return make


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def _nginx(ctx: Context) -> Server:
    nginx = ensure_tool("nginx", "nginx-light")
    port = free_port()
    folder = ctx.tmp / f"nginx-{port}"
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=NGINX_WORKERS, dir=folder, port=port, body=CONSTANT_BODY))
    # -p and -e keep every path nginx opens, before and after reading the
    # configuration, in the temporary folder.
    argv = [nginx, "-p", f"{folder}/", "-e", str(folder / "error.log"), "-c", str(conf)]
    return Server("nginx_constant", argv, kind="nginx", workers=NGINX_WORKERS, env=base_env(), cwd=folder, port=port,
                  log_dir=ctx.tmp)


def _ours(name: str, *, redis: bool, log_level: str | None = None, **extra: str) -> Callable[[Context], Server]:
    def make(ctx: Context) -> Server:
        settings = {"PIGHAND_LOG_LEVEL": log_level} if log_level else {}
        return shipped_server(name, ctx.store, ctx.tmp, redis=ctx.redis_settings if redis else None,
                              **settings, **extra)
    return make


def _ours_gunicorn(ctx: Context) -> Server:
    return gunicorn_server("ours_inproc_gunicorn", ctx.store, ctx.tmp)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("bare_constant", "bare Flask, gunicorn sync -w 2", _bare("bare_app:constant_app", False),
             worker_class="sync"),
    Scenario("bare_redis", "bare Flask+Redis, gunicorn sync -w 2", _bare("bare_app:redis_app", True),
             redis=True, worker_class="sync"),
    Scenario("nginx_constant", f"nginx, {NGINX_WORKERS} workers, return 200", _nginx),
    Scenario("ours_inproc", "ours in-process, serve -w 2", _ours("ours_inproc", redis=False), ours=True),
    Scenario("ours_redis", "ours Redis, serve -w 2", _ours("ours_redis", redis=True), ours=True, redis=True),
    Scenario("ours_inproc_nolog", "ours in-process, serve, log warning",
             _ours("ours_inproc_nolog", redis=False, log_level="warning"), ours=True),
    Scenario("ours_redis_nolog", "ours Redis, serve, log warning",
             _ours("ours_redis_nolog", redis=True, log_level="warning"), ours=True, redis=True),
    Scenario("ours_inproc_gunicorn", "ours in-process, gunicorn gthread -w 2", _ours_gunicorn, ours=True,
             worker_class="gthread"),
    # What pinning each worker to a CPU of its own (cpu_affinity) buys.
    Scenario("ours_inproc_unpinned", "ours in-process, serve, cpu_affinity off",
             _ours("ours_inproc_unpinned", redis=False, PIGHAND_CPU_AFFINITY="false"), ours=True),
)
KEYS = tuple(s.key for s in SCENARIOS)


def check_answer(scenario: Scenario, server: Server, ctx: Context) -> None:
    """Fail loudly unless the server answers a 200 envelope with the data we
    expect; otherwise the numbers would measure an error path. For ours this
    GET also warms the token (the first one is the only platform call)."""
    answer = http_get(server.base_url + TOKEN_PATH, headers=ctx.store.headers, timeout_s=10.0)
    data = envelope_data(answer.status, answer.body, what=f"{scenario.key}: GET {TOKEN_PATH}")
    if scenario.ours:
        if not isinstance(data, str) or not data:
            raise BenchError(f"{scenario.key}: the envelope has no token: {answer.body[:300]!r}")
        if ctx.token and data != ctx.token:
            raise BenchError(f"{scenario.key}: served a different token than the first scenario did")
        ctx.token = data
        if answer.headers.get("content-type", "").split(";")[0] != "application/json":
            raise BenchError(f"{scenario.key}: Content-Type {answer.headers.get('content-type')!r}")
    else:
        expected = ctx.bare_value if scenario.redis else "constant"
        if data != expected:
            raise BenchError(f"{scenario.key}: expected data {expected!r}, got {data!r}")


def measure(scenario: Scenario, ctx: Context, duration_s: int, quiet_s: float) -> WrkResult:
    server = scenario.make(ctx)
    with running(server):
        if scenario.worker_class and server.worker_class() != scenario.worker_class:
            raise BenchError(f"{scenario.key}: gunicorn runs the {server.worker_class()!r} worker, expected "
                             f"{scenario.worker_class!r}; check the flags and gunicorn.conf.py")
        if scenario.ours:
            wait_all_workers(server)
        check_answer(scenario, server, ctx)
        url = server.base_url + TOKEN_PATH
        # Every request carries the API key, as real callers' do; the bare
        # apps and nginx ignore it, so all scenarios parse the same bytes.
        run_wrk(url, WARM_S, ctx.store.headers)
        if quiet_s > 0:
            wait_quiet(quiet_s)
        result = measured_run(server, url, duration_s, headers=ctx.store.headers,
                              extra_pids=[ctx.redis_pid] if scenario.redis and ctx.redis_pid else [])
        if result.non_2xx:
            raise BenchError(f"{scenario.key}: {result.non_2xx} non-2xx answers during the run:\n"
                             f"{server.log_tail()}")
    server.drop_log()
    return result
