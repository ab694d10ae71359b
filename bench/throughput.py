"""Throughput of a cached ``GET /token/<platform>/<appid>``, side by side with
bare Flask apps doing the least possible work, under the same gunicorn flags.

Run from the repository root::

    python -m bench.throughput             # 10 s per scenario
    python -m bench.throughput --quick     # 3 s per scenario
    python -m bench.throughput --json bench/results/run.json

Needs ``wrk`` on PATH and Redis at 127.0.0.1:6379. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as py_platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.fakes.wechat import FakeWeChat

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
APPID = "wx_bench_1"
SECRET = "bench-secret-1"
TOKEN_PATH = f"/token/wechat/{APPID}"
WRK_THREADS = 1
WRK_CONNECTIONS = 16
WARM_S = 1
# --threads 1: gunicorn.conf.py sets threads = 4, and gunicorn silently runs
# gthread instead of sync when threads > 1, so "-k sync" alone is not sync.
SYNC_FLAGS = ["-w", "2", "-k", "sync", "--threads", "1"]
SHIPPED_FLAGS = ["-w", "2"]
# gunicorn names the worker class it really uses at info level; checked below.
LOG_FLAGS = ["--log-level", "info"]
EXPECTED_WORKER = {"sync": "sync", "shipped": "pighand_token.worker.TokenWorker"}
# A run is flagged noisy when other processes used more than this many cores
# on average while it ran.
NOISE_CORES = 0.10

# Loopback only: never let a proxy setting route the checks elsewhere.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(Exception):
    """A precondition or a check failed; the message says which."""


# -- scenarios -------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    ours: bool
    redis_path: bool
    gunicorn: str  # "sync" or "shipped"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("bare_constant", "bare Flask, constant (sync)", False, False, "sync"),
    Scenario("ours_inproc_sync", "ours, in-process (sync)", True, False, "sync"),
    Scenario("bare_redis", "bare Flask + Redis GET (sync)", False, True, "sync"),
    Scenario("ours_redis_sync", "ours, Redis (sync)", True, True, "sync"),
    Scenario("ours_inproc_shipped", "ours, in-process (shipped conf)", True, False, "shipped"),
    Scenario("ours_redis_shipped", "ours, Redis (shipped conf)", True, True, "shipped"),
)


@dataclass(frozen=True)
class Ratio:
    label: str
    ours: str
    bare: str
    target: float | None


RATIOS: tuple[Ratio, ...] = (
    Ratio("in-process shipped / bare constant", "ours_inproc_shipped", "bare_constant", 1.8),
    Ratio("Redis shipped / bare + Redis", "ours_redis_shipped", "bare_redis", 1.5),
    Ratio("in-process sync / bare constant", "ours_inproc_sync", "bare_constant", 0.90),
    Ratio("Redis sync / bare + Redis", "ours_redis_sync", "bare_redis", 0.90),
)


# -- wrk -------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0
    worker_class: str = ""
    # CPU seconds each gunicorn worker spent in the measured run: keep-alive
    # connections that all land on one worker show up here, not in req/s alone.
    worker_cpu_s: list[float] = field(default_factory=list)
    # CPU seconds used during the run by processes other than the server, wrk
    # and this script: other work on the machine that skews the numbers.
    foreign_cpu_s: float = 0.0
    noisy: bool = False

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> WrkResult:
    """Numbers from ``wrk --latency`` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if rps is None or total is None:
        raise BenchError(f"could not parse wrk output:\n{output}")
    percentiles: dict[str, float] = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M):
        percentiles[pct] = float(value) * _UNIT_MS[unit]
    if set(percentiles) != {"50", "75", "90", "99"}:
        raise BenchError(f"no latency distribution in wrk output (was --latency passed?):\n{output}")
    socket_errors: dict[str, int] = {}
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errs is not None:
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, errs.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests_per_s=float(rps.group(1)), p50_ms=percentiles["50"], p75_ms=percentiles["75"],
        p90_ms=percentiles["90"], p99_ms=percentiles["99"], requests=int(total.group(1)),
        socket_errors=socket_errors, non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise BenchError("wrk is not installed (on Debian/Ubuntu: apt-get install -y wrk)")
    return path


# Every request carries an API key, as real callers' do (the bare apps
# ignore it); set once the bench client exists.
API_KEY: list[str] = []


def _key_headers() -> dict[str, str]:
    return {"X-Api-Key": API_KEY[0]} if API_KEY else {}


def run_wrk(url: str, duration_s: int) -> WrkResult:
    headers = [arg for name, value in _key_headers().items() for arg in ("-H", f"{name}: {value}")]
    cmd = [wrk_path(), f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration_s}s", "--latency", *headers, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return parse_wrk(proc.stdout)


# -- processes -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with _HTTP.open(urllib.request.Request(url, headers=_key_headers()), timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def base_env(**extra: str) -> dict[str, str]:
    """os.environ without anything that would change what gunicorn or the
    service read, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGHAND_") and k != "GUNICORN_CMD_ARGS"}
    env.update(extra)
    return env


class Server:
    """One gunicorn master in its own process group, so stopping it takes its
    workers with it and a Ctrl-C in the terminal reaches only this script.

    A process group, not a session: with the kernel's autogroup scheduling
    (sched_autogroup_enabled, on by default) every session is scheduled as one
    unit, so a server in a session of its own and wrk in this one would split
    the cores by session instead of by process, which skews the numbers with
    the worker class."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path, port: int,
                 log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, process_group=0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name}: gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                http_get(self.base_url + "/", timeout_s=1.0)  # any HTTP answer means it is serving
                return
            except OSError:
                time.sleep(0.1)
        raise BenchError(f"{self.name}: gunicorn did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # graceful: the master stops its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        # Workers that outlived their master would skew the next scenario.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return sorted(int(pid) for pid in out.stdout.split())

    def worker_class(self) -> str:
        found = re.findall(r"Using worker: (\S+)", self.log_path.read_text(errors="replace"))
        return found[-1] if found else "unknown"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the name in (...) may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9])
    # Interrupt time is left out: it is mostly the loopback traffic of the
    # run itself and is charged to no process. Steal is the hypervisor's.
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this script and its finished children (wrk, ps)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def wait_quiet(max_wait_s: float, limit_cores: float = 0.15) -> float:
    """Wait (up to max_wait_s) for a second in which other processes use less
    than limit_cores of CPU; returns the last measured load in cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy, own = machine_busy_s(), own_cpu_s()
        time.sleep(1.0)
        load = (machine_busy_s() - busy) - (own_cpu_s() - own)
        if load < limit_cores or time.monotonic() >= deadline:
            return load


# -- the run ---------------------------------------------------------------------
@dataclass
class Setup:
    tmp: Path
    wechat_base: str
    sqlite_path: Path
    redis_prefix: str
    redis_pid: int
    bare_key: str
    bare_value: str
    token: str = ""


def service_env(setup: Setup, *, port: int, redis_path: bool) -> dict[str, str]:
    settings = {
        "PIGHAND_ENV": "testing",
        "PIGHAND_HOST": "127.0.0.1",
        "PIGHAND_PORT": str(port),
        "PIGHAND_SQLITE_PATH": str(setup.sqlite_path),
        "PIGHAND_WECHAT_API_BASE": setup.wechat_base,
        "PIGHAND_IS_ENABLE_SCHEDULE": "false",
        "PIGHAND_LOG_LEVEL": "warning",
    }
    if redis_path:
        settings["PIGHAND_REDIS_HOST"] = REDIS_HOST
        settings["PIGHAND_REDIS_PORT"] = str(REDIS_PORT)
        settings["PIGHAND_REDIS_KEY_PREFIX"] = setup.redis_prefix
    return base_env(**settings)


def seed_credential(setup: Setup) -> None:
    env = service_env(setup, port=3050, redis_path=False)
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "platform", "add", "wechat", APPID,
                           "--secret", SECRET], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BenchError(f"seeding the credential failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "client", "add", "bench", "--app",
                           f"wechat:{APPID}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BenchError(f"creating the bench client failed ({proc.returncode}):\n{proc.stderr}")
    API_KEY[:] = [proc.stdout.strip()]


def make_server(scenario: Scenario, setup: Setup) -> Server:
    port = free_port()
    gunicorn = [sys.executable, "-m", "gunicorn"]
    if scenario.ours:
        flags = SYNC_FLAGS if scenario.gunicorn == "sync" else SHIPPED_FLAGS
        argv = [*gunicorn, "-c", "gunicorn.conf.py", *flags, *LOG_FLAGS]
        return Server(scenario.key, argv, env=service_env(setup, port=port, redis_path=scenario.redis_path),
                      cwd=ROOT, port=port, log_dir=setup.tmp)
    target = "bare_app:redis_app" if scenario.redis_path else "bare_app:constant_app"
    argv = [*gunicorn, *SYNC_FLAGS, *LOG_FLAGS, "-b", f"127.0.0.1:{port}", target]
    env = base_env(BENCH_REDIS_HOST=REDIS_HOST, BENCH_REDIS_PORT=str(REDIS_PORT), BENCH_REDIS_KEY=setup.bare_key)
    # Run from bench/: gunicorn reads ./gunicorn.conf.py by default, and the
    # repository root's one would turn the bare apps into our service.
    return Server(scenario.key, argv, env=env, cwd=BENCH_DIR, port=port, log_dir=setup.tmp)


def check_answer(scenario: Scenario, server: Server, setup: Setup) -> None:
    """Fail loudly unless the server answers a 200 envelope with the data we
    expect; otherwise the numbers would measure an error path."""
    status, body = http_get(server.base_url + TOKEN_PATH, timeout_s=10.0)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status != 200 or not isinstance(doc, dict) or doc.get("code") != 200 or doc.get("error") != "":
        raise BenchError(f"{scenario.label}: expected a 200 envelope, got HTTP {status}: {body[:300]!r}\n"
                         f"{server.log_tail()}")
    data = doc.get("data")
    if scenario.ours:
        if not isinstance(data, str) or not data:
            raise BenchError(f"{scenario.label}: the envelope has no token: {body[:300]!r}")
        if setup.token and data != setup.token:
            raise BenchError(f"{scenario.label}: served a different token than the first run did")
        setup.token = data
    else:
        expected = setup.bare_value if scenario.redis_path else "constant"
        if data != expected:
            raise BenchError(f"{scenario.label}: expected data {expected!r}, got {data!r}")


def measure(scenario: Scenario, setup: Setup, duration_s: int, quiet_s: float) -> WrkResult:
    server = make_server(scenario, setup)
    with running(server):
        worker = server.worker_class()
        if worker != EXPECTED_WORKER[scenario.gunicorn]:
            raise BenchError(f"{scenario.label}: gunicorn runs the {worker!r} worker, expected "
                             f"{EXPECTED_WORKER[scenario.gunicorn]!r}; check the flags and gunicorn.conf.py")
        check_answer(scenario, server, setup)
        url = server.base_url + TOKEN_PATH
        run_wrk(url, WARM_S)
        if quiet_s > 0:
            wait_quiet(quiet_s)
        result = measured_run(server, url, duration_s, redis_pid=setup.redis_pid if scenario.redis_path else 0)
        result.worker_class = worker
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise BenchError(f"{scenario.label}: gunicorn died during the run:\n{server.log_tail()}")
        if result.non_2xx:
            raise BenchError(f"{scenario.label}: {result.non_2xx} non-2xx answers during the run:\n"
                             f"{server.log_tail()}")
    return result


def measured_run(server: Server, url: str, duration_s: int, *, redis_pid: int) -> WrkResult:
    """wrk against the server, plus where the machine's CPU went meanwhile."""
    assert server.proc is not None
    workers = server.worker_pids()
    # The master, and Redis when it serves the scenario, are part of the run.
    helpers = [server.proc.pid] + ([redis_pid] if redis_pid else [])
    workers_before = [cpu_seconds(pid) for pid in workers]
    helpers_before = sum(cpu_seconds(pid) for pid in helpers)
    busy_before, own_before = machine_busy_s(), own_cpu_s()
    result = run_wrk(url, duration_s)
    busy = machine_busy_s() - busy_before
    own = own_cpu_s() - own_before
    helpers_cpu = sum(cpu_seconds(pid) for pid in helpers) - helpers_before
    result.worker_cpu_s = [round(cpu_seconds(pid) - b, 2) for pid, b in zip(workers, workers_before, strict=True)]
    result.foreign_cpu_s = round(max(0.0, busy - own - helpers_cpu - sum(result.worker_cpu_s)), 2)
    result.noisy = result.foreign_cpu_s > NOISE_CORES * duration_s
    return result


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = wrk_path()
    wrk_version = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    return {
        "nproc": len(os.sched_getaffinity(0)),  # what nproc prints
        "cpu_model": model,
        "python": py_platform.python_version(),
        "implementation": py_platform.python_implementation(),
        "wrk": (wrk_version.stdout + wrk_version.stderr).splitlines()[0].strip(),
    }


def check_redis() -> redis.Redis:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=2, socket_connect_timeout=2,
                         decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}") from None
    return client


def redis_pid(client: redis.Redis) -> int:
    """The local Redis server's pid (0 if it is not a local process we can see)."""
    try:
        pid = int(client.info("server").get("process_id", 0))
    except (redis.RedisError, ValueError):
        return 0
    return pid if Path(f"/proc/{pid}").exists() else 0


def pick(runs: list[WrkResult]) -> WrkResult:
    """The median run by req/s, among the quiet runs if there are any, so one
    disturbed round does not set the number."""
    quiet = [r for r in runs if not r.noisy] or runs
    ordered = sorted(quiet, key=lambda r: r.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def ratio_rows(results: dict[str, WrkResult]) -> list[dict[str, Any]]:
    rows = []
    for ratio in RATIOS:
        ours, bare = results.get(ratio.ours), results.get(ratio.bare)
        value = ours.requests_per_s / bare.requests_per_s if ours and bare and bare.requests_per_s else None
        met = None if value is None or ratio.target is None else value >= ratio.target
        rows.append({"label": ratio.label, "ours": ratio.ours, "bare": ratio.bare, "ratio": value,
                     "target": ratio.target, "met": met})
    return rows


def print_ratios(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        value = "n/a" if row["ratio"] is None else f"{row['ratio']:.3f}"
        if row["target"] is None:
            verdict = "(no target)"
        else:
            verdict = f"target >= {row['target']:.2f}  " + {True: "OK", False: "MISSED", None: ""}[row["met"]]
        print(f"  {row['label']:<38} {value:>6}  {verdict}")


def cpu_split(result: WrkResult) -> str:
    text = "/".join(f"{s:.1f}" for s in result.worker_cpu_s) + " s"
    if len(result.worker_cpu_s) > 1 and max(result.worker_cpu_s) > 0:
        if min(result.worker_cpu_s) < 0.5 * max(result.worker_cpu_s):
            text += " (UNBALANCED)"
    return text


def print_summary(order: list[Scenario], results: dict[str, WrkResult], rows: list[dict[str, Any]]) -> None:
    print("\nSummary")
    header = (f"  {'scenario':<34} {'worker':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
              f"{'other cpu':>9}  worker cpu")
    print(header)
    print("  " + "-" * (len(header) + 8))
    for scenario in order:
        r = results[scenario.key]
        other = f"{r.foreign_cpu_s:.1f} s" + ("!" if r.noisy else " ")
        print(f"  {scenario.label:<34} {r.worker_class:>7} {r.requests_per_s:>9.1f} {r.p50_ms:>8.2f} "
              f"{r.p99_ms:>8.2f} {r.errors:>7} {other:>9}  {cpu_split(r)}")
    if any(results[s.key].noisy for s in order):
        print("  ! other processes used the CPU during that run; its numbers are not comparable "
              "(rerun with --wait-quiet 30 on a quiet machine)")
    print("\nRatios (our req/s / bare req/s)")
    print_ratios(rows)


def run(args: argparse.Namespace) -> int:
    duration_s = 3 if args.quick else args.duration
    wanted = set(args.only.split(",")) if args.only else None
    order = [s for s in SCENARIOS if wanted is None or s.key in wanted]
    if wanted is not None and len(order) != len(wanted):
        known = ", ".join(s.key for s in SCENARIOS)
        raise BenchError(f"--only names unknown scenarios; known: {known}")

    info = machine_info()  # also fails early when wrk is missing
    print(f"machine: nproc={info['nproc']}  cpu={info['cpu_model']}  "
          f"python={info['implementation']} {info['python']}  {info['wrk']}")
    print(f"bench: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{duration_s}s --latency  "
          f"(warm-up {WARM_S} s), {args.rounds} round(s), GET {TOKEN_PATH}\n")
    client = check_redis()

    runs: dict[str, list[WrkResult]] = {s.key: [] for s in order}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pighand-bench-")))
        wechat = stack.enter_context(FakeWeChat())
        wechat.add_app(APPID, SECRET)
        prefix = f"bench{uuid.uuid4().hex[:10]}:"
        # A token-sized value, so both Redis scenarios move about the same bytes.
        setup = Setup(tmp=tmp, wechat_base=wechat.base_url, sqlite_path=tmp / "pighand.sqlite3",
                      redis_prefix=prefix, redis_pid=redis_pid(client), bare_key=f"{prefix}bare",
                      bare_value="83_" + "b" * 134)

        def cleanup_redis() -> None:
            keys = list(client.scan_iter(match=f"{prefix}*", count=500))
            if keys:
                client.delete(*keys)
            client.close()

        stack.callback(cleanup_redis)
        seed_credential(setup)
        client.set(setup.bare_key, setup.bare_value)

        total = len(order) * args.rounds
        step = 0
        for round_no in range(args.rounds):
            for scenario in order:
                step += 1
                tag = f"[{step}/{total}]" + (f" round {round_no + 1}" if args.rounds > 1 else "")
                print(f"{tag} {scenario.label:<34}", end=" ", flush=True)
                result = measure(scenario, setup, duration_s, args.wait_quiet)
                runs[scenario.key].append(result)
                extra = f"  socket errors {result.socket_errors}" if result.errors else ""
                if result.noisy:
                    extra += f"  NOISY: other processes used {result.foreign_cpu_s:.1f} CPU s"
                print(f"{result.requests_per_s:9.1f} req/s  p50 {result.p50_ms:6.2f} ms  "
                      f"p99 {result.p99_ms:6.2f} ms  worker cpu {cpu_split(result)}{extra}", flush=True)
        fetched = wechat.count()

    results = {key: pick(rs) for key, rs in runs.items()}
    rows = ratio_rows(results)
    print_summary(order, results, rows)
    # One fetch per storage path is expected; more would mean misses were measured.
    print(f"\ncalls to the fake WeChat: {fetched}")

    if args.json:
        report = {
            "machine": info,
            "load": {"tool": "wrk", "threads": WRK_THREADS, "connections": WRK_CONNECTIONS,
                     "duration_s": duration_s, "warm_s": WARM_S, "rounds": args.rounds, "path": TOKEN_PATH},
            "gunicorn": {"bare": SYNC_FLAGS, "sync": ["-c", "gunicorn.conf.py", *SYNC_FLAGS],
                         "shipped": ["-c", "gunicorn.conf.py", *SHIPPED_FLAGS]},
            "scenarios": {s.key: {"label": s.label, "ours": s.ours, "redis": s.redis_path,
                                  "gunicorn": s.gunicorn, **asdict(results[s.key]),
                                  "rounds": [asdict(r) for r in runs[s.key]]} for s in order},
            "ratios": rows,
            "platform_calls": fetched,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")

    if args.check and any(row["met"] is False for row in rows):
        return 1
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, metavar="S", help="seconds per measured run (10)")
    parser.add_argument("--quick", action="store_true", help="3 s per measured run")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="run every scenario N times and keep the median run (1)")
    parser.add_argument("--only", metavar="KEYS",
                        help="comma-separated scenario keys: " + ", ".join(s.key for s in SCENARIOS))
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="before each measured run, wait up to S seconds for other processes to go idle")
    parser.add_argument("--check", action="store_true", help="exit 1 when a ratio misses its target")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    return args


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM takes the Ctrl-C path, so every started server is stopped.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
