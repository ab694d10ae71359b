"""What every benchmark shares: tools, servers, wrk, and where the CPU went.

Servers run in their own process group but in this script's session (see
``Server``); their output goes to a log file in the run's temporary folder,
and they are stopped on every exit path (SIGTERM, then SIGKILL of the group).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent

WRK_THREADS = 1
WRK_CONNECTIONS = 16
# A run is flagged noisy when other processes used more than this many cores
# on average while it ran.
NOISE_CORES = 0.10

# Loopback only: never let a proxy setting route the checks elsewhere.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(Exception):
    """A precondition or a check failed; the message says which."""


# -- tools -----------------------------------------------------------------------
def ensure_tool(name: str, package: str) -> str:
    """The path of ``name``, installing the Debian ``package`` with apt-get
    when it is missing (root only)."""
    found = _which(name)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise BenchError(f"{name} is not installed (on Debian/Ubuntu: apt-get install -y {package})")
    print(f"{name} is missing: apt-get install -y {package}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", package]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:  # a stale package list: refresh it once
        subprocess.run([apt, "update", "-q"], capture_output=True, env=env, stdin=subprocess.DEVNULL)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    found = _which(name)
    if proc.returncode != 0 or not found:
        raise BenchError(f"apt-get install -y {package} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                         f"{proc.stderr[-2000:]}")
    return found


def _which(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


# -- HTTP ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


def http_get(url: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 5.0) -> Answer:
    """One GET on a fresh connection. Raises OSError when nothing answers."""
    request = urllib.request.Request(url, headers={**(headers or {}), "Connection": "close"})
    try:
        with _HTTP.open(request, timeout=timeout_s) as resp:
            return Answer(resp.status, _lower(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, _lower(exc.headers.items()), exc.read())


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def base_env(**extra: str) -> dict[str, str]:
    """os.environ without anything that would change what the servers or the
    service read, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIGHAND_", "GRANIAN_")) and k not in ("GUNICORN_CMD_ARGS", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(extra)
    return env


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
    # CPU seconds each worker spent in the measured run: keep-alive
    # connections that all land on one worker show up here, not in req/s alone.
    worker_cpu_s: list[float] = field(default_factory=list)
    # CPU seconds used during the run by processes other than the server, wrk,
    # Redis and this script: other work on the machine that skews the numbers.
    foreign_cpu_s: float = 0.0
    noisy: bool = False

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def unbalanced(self) -> bool:
        cpu = self.worker_cpu_s
        return len(cpu) > 1 and max(cpu) > 0 and min(cpu) < 0.5 * max(cpu)


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
    return ensure_tool("wrk", "wrk")


def wrk_command(url: str, duration_s: int, headers: Mapping[str, str]) -> list[str]:
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    return [wrk_path(), f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration_s}s", "--latency",
            *header_args, url]


def run_wrk(url: str, duration_s: int, headers: Mapping[str, str]) -> WrkResult:
    cmd = wrk_command(url, duration_s, headers)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return parse_wrk(proc.stdout)


# -- processes -------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the name in (...) may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (MiB), from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9])
    # Interrupt time is left out: it is mostly the loopback traffic of the
    # run itself and is charged to no process. Steal is the hypervisor's.
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this script and its finished children (wrk)."""
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


class Server:
    """One server (granian, gunicorn or nginx master) in its own process
    group, so stopping it takes its workers with it and a Ctrl-C in the
    terminal reaches only this script.

    A process group, not a session: with the kernel's autogroup scheduling
    (sched_autogroup_enabled, on by default) every session is scheduled as one
    unit, so a server in a session of its own and wrk in this one would split
    the cores by session instead of by process, whatever each needs.

    Ready once it answers HTTP and has its ``workers`` (the master's
    children except multiprocessing's resource_tracker). Whether every
    worker has loaded its app is the caller's to wait for (our service:
    ``bench.ours.wait_all_workers``). ``kind`` is "granian", "gunicorn" or
    "nginx"."""

    def __init__(self, name: str, argv: Sequence[str], *, kind: str, workers: int, env: dict[str, str], cwd: Path,
                 port: int, log_dir: Path, ready_path: str = "/") -> None:
        self.name = name
        self.argv = list(argv)
        self.kind = kind
        self.workers = workers
        self.env = env
        self.cwd = cwd
        self.port = port
        self.ready_path = ready_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, process_group=0)
        deadline = time.monotonic() + timeout_s
        answered = False
        while time.monotonic() < deadline:
            self.check_alive()
            if not answered:
                try:
                    http_get(self.base_url + self.ready_path, timeout_s=1.0)  # any HTTP answer will do
                    answered = True
                except OSError:
                    pass
            if answered and len(self.worker_pids()) >= self.workers:
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name}: not serving with {self.workers} workers within {timeout_s:.0f} s:\n"
                         f"{self.log_tail()}")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name}: the server exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
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
        return [pid for pid in children(self.proc.pid) if "resource_tracker" not in cmdline(pid)]

    def helper_pids(self) -> list[int]:
        """The master and its non-worker children: part of the run, not noise."""
        assert self.proc is not None
        workers = set(self.worker_pids())
        return [self.proc.pid] + [pid for pid in children(self.proc.pid) if pid not in workers]

    def worker_class(self) -> str:
        found = re.findall(r"Using worker: (\S+)", self.log_text())
        return found[-1].rstrip('",') if found else "unknown"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def drop_log(self) -> None:
        """The access log at info grows by megabytes per second under load:
        a scenario that went well does not keep it."""
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        yield server
    finally:
        server.stop()


def measured_run(server: Server, url: str, duration_s: int, *, headers: Mapping[str, str],
                 extra_pids: Sequence[int] = ()) -> WrkResult:
    """wrk against the server, plus where the machine's CPU went meanwhile.
    ``extra_pids``: other processes that serve the run (Redis)."""
    workers = server.worker_pids()
    helpers = [*server.helper_pids(), *extra_pids]
    workers_before = [cpu_seconds(pid) for pid in workers]
    helpers_before = sum(cpu_seconds(pid) for pid in helpers)
    busy_before, own_before = machine_busy_s(), own_cpu_s()
    result = run_wrk(url, duration_s, headers)
    busy = machine_busy_s() - busy_before
    own = own_cpu_s() - own_before
    helpers_cpu = sum(cpu_seconds(pid) for pid in helpers) - helpers_before
    result.worker_cpu_s = [round(cpu_seconds(pid) - b, 2) for pid, b in zip(workers, workers_before, strict=True)]
    result.foreign_cpu_s = round(max(0.0, busy - own - helpers_cpu - sum(result.worker_cpu_s)), 2)
    result.noisy = result.foreign_cpu_s > NOISE_CORES * duration_s
    server.check_alive()
    return result
