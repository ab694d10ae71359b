"""Our service as the benchmarks run it: production settings, a real API
key, credentials imported with the command operators use, and the shipped
server (``python -m pighand_token serve``) or gunicorn's gthread worker.

Settings come from ``PIGHAND_*`` variables only: ``PIGHAND_ENV=production``
with a generated ``PIGHAND_ENCRYPTION_KEY``, ``PIGHAND_HOST=127.0.0.1``, a
free ``PIGHAND_PORT``, ``PIGHAND_WORKERS``, a SQLite store in the run's
temporary folder, the fake WeChat as ``PIGHAND_WECHAT_API_BASE``; the log
level is the default (info: the access log is on) unless a scenario says
otherwise.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

from bench.harness import ROOT, BenchError, Server, base_env, free_port, http_get

WORKERS = 2
# The X-Request-Id of an answer starts with a prefix each worker process
# draws at start (pighand_token/logs.py): it tells which worker answered.
REQUEST_ID_PREFIX = 12


@dataclass
class Store:
    """One SQLite store with its credentials and the bench client's key."""

    path: Path
    wechat_base: str
    encryption_key: str = field(default_factory=lambda: Fernet.generate_key().decode())
    api_key: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def env(self, *, port: int, workers: int = WORKERS, schedule: bool = True,
            redis: Mapping[str, str] | None = None, **settings: str) -> dict[str, str]:
        values = {
            "PIGHAND_ENV": "production",
            "PIGHAND_ENCRYPTION_KEY": self.encryption_key,
            "PIGHAND_HOST": "127.0.0.1",
            "PIGHAND_PORT": str(port),
            "PIGHAND_WORKERS": str(workers),
            "PIGHAND_SQLITE_PATH": str(self.path),
            "PIGHAND_WECHAT_API_BASE": self.wechat_base,
            "PIGHAND_IS_ENABLE_SCHEDULE": "true" if schedule else "false",
            **(redis or {}),
            **settings,
        }
        return base_env(**values)

    def command(self, *args: str) -> str:
        """``python -m pighand_token ARGS`` on this store; its stdout."""
        proc = subprocess.run([sys.executable, "-m", "pighand_token", *args], cwd=ROOT,
                              env=self.env(port=3050, schedule=False), capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BenchError(f"pighand-token {' '.join(args[:2])} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return proc.stdout

    def import_wechat(self, credentials: Iterable[tuple[str, str]], tmp: Path) -> int:
        """``platform import`` of (appid, secret) rows as a CSV file."""
        rows = list(credentials)
        path = tmp / f"credentials-{self.path.stem}-{time.monotonic_ns()}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["platform", "appid", "secret"])
            writer.writerows(("wechat", appid, secret) for appid, secret in rows)
        out = self.command("platform", "import", str(path))
        if f"imported {len(rows)} " not in out:
            raise BenchError(f"platform import: expected {len(rows)} imported, got: {out.strip()}")
        return len(rows)

    def add_client(self) -> str:
        """``client add bench --all-apps``: the key it prints is what wrk sends."""
        key = self.command("client", "add", "bench", "--all-apps").strip()
        if not key.startswith("pht_"):
            raise BenchError(f"client add printed no key: {key[:80]!r}")
        self.api_key = key
        return key


def shipped_server(name: str, store: Store, log_dir: Path, *, workers: int = WORKERS, schedule: bool = True,
                   redis: Mapping[str, str] | None = None, **settings: str) -> Server:
    """``python -m pighand_token serve``: granian, as shipped."""
    port = free_port()
    return Server(name, [sys.executable, "-m", "pighand_token", "serve"], kind="granian", workers=workers,
                  env=store.env(port=port, workers=workers, schedule=schedule, redis=redis, **settings), cwd=ROOT,
                  port=port, log_dir=log_dir, ready_path="/healthz")


def gunicorn_server(name: str, store: Store, log_dir: Path, *, workers: int = WORKERS,
                    **settings: str) -> Server:
    """``gunicorn -c gunicorn.conf.py``: the stock gthread worker."""
    port = free_port()
    return Server(name, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"], kind="gunicorn",
                  workers=workers, env=store.env(port=port, workers=workers, **settings), cwd=ROOT, port=port,
                  log_dir=log_dir, ready_path="/healthz")


def answering_worker(answer_headers: Mapping[str, str]) -> str:
    rid = answer_headers.get("x-request-id", "")
    if len(rid) <= REQUEST_ID_PREFIX:
        raise BenchError(f"no X-Request-Id in the answer to tell its worker by: {rid!r}")
    return rid[:REQUEST_ID_PREFIX]


def wait_all_workers(server: Server, timeout_s: float = 30.0) -> None:
    """Until every worker has answered a request: a worker whose app is not
    loaded yet would leave the first connections to the others."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = http_get(server.base_url + "/healthz", timeout_s=5.0)
        if answer.status == 200:
            seen.add(answering_worker(answer.headers))
            if len(seen) >= server.workers:
                return
        else:
            time.sleep(0.05)
        server.check_alive()
    raise BenchError(f"{server.name}: {len(seen)} of {server.workers} workers answered within {timeout_s:.0f} s:\n"
                     f"{server.log_tail()}")


def get_token(server: Server, store: Store, platform: str, appid: str, *,
              timeout_s: float = 30.0) -> tuple[str, str]:
    """One GET of a token on a fresh connection: (token, answering worker).
    Anything but a 200 envelope holding a token raises BenchError."""
    answer = http_get(f"{server.base_url}/token/{platform}/{appid}", headers=store.headers, timeout_s=timeout_s)
    token = envelope_data(answer.status, answer.body, what=f"{server.name}: GET /token/{platform}/{appid}")
    if not isinstance(token, str) or not token:
        raise BenchError(f"{server.name}: the envelope for {appid} holds no token: {answer.body[:200]!r}")
    return token, answering_worker(answer.headers)


def envelope_data(status: int, body: bytes, *, what: str) -> object:
    """The data of a 200 envelope ``{"code":200,"data":...,"error":""}``."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status != 200 or not isinstance(doc, dict) or doc.get("code") != 200 or doc.get("error") != "":
        raise BenchError(f"{what}: expected a 200 envelope, got HTTP {status}: {body[:300]!r}")
    return doc.get("data")


def warm(server: Server, store: Store, appids: Iterable[str], *, platform: str = "wechat", threads: int = 16,
         max_tries: int = 60) -> int:
    """GET each token on fresh connections until every worker has answered
    it once (each worker keeps its own in-process tier); returns the GETs made."""
    from concurrent.futures import ThreadPoolExecutor

    def one(appid: str) -> int:
        seen: set[str] = set()
        for tries in range(1, max_tries + 1):
            seen.add(get_token(server, store, platform, appid)[1])
            if len(seen) >= server.workers:
                return tries
        raise BenchError(f"{server.name}: {appid} reached {len(seen)} of {server.workers} workers "
                         f"in {max_tries} GETs")

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, list(appids)))
