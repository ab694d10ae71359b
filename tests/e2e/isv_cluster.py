"""The deployment the third-party (ISV) cluster tests share: two instances of
two workers of the shipped server on one Redis and one SQL database, in front
of one fake platform that pushes to the first instance's callback URL.

A :class:`Family` holds what sets DingTalk suites, WeCom suites and Feishu
store apps apart here (the setting naming the fake, the suite or app seeded,
the token asked for); the tests keep what each platform does differently."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import requests

from pighand_token.app import create_app
from tests.conftest import Server
from tests.e2e.test_workers import envelope, seed
from tests.fakes.server import Call
from tests.integration.isv_hub import PushingFake

# 30 s: a worker that drops a token within 5 s did so because it was told,
# not because its memory ran out.
COMMON: dict[str, Any] = {"is_enable_schedule": False, "local_cache_ttl": 30, "log_level": "info"}


class CountingFake(PushingFake, Protocol):
    """A pushing fake that pushes tickets and tells the calls it was made."""

    def find(self, path: str | None = None, **filters: Any) -> list[Call]: ...

    def push_ticket(self, key: str, /) -> Any: ...


FakeT = TypeVar("FakeT", bound=CountingFake)


@dataclass(frozen=True)
class Family:
    """One third-party family as these deployments see it."""

    api_base: str  # the setting that points the server at the fake, e.g. "dingtalk_api_base"
    platform: str  # the platform of the suite or store app seeded, e.g. "dingtalk_suite"
    key: str  # that suite's or app's appid: suite key, suite id, app id
    secret: str  # its stored secret
    path: str  # the token the tests ask for, e.g. "/token/dingtalk_corp/<suite key>:<corp id>"

    @property
    def callback(self) -> str:
        return f"/callback/{self.platform}/{self.key}"

    def settings(self, tmp_path: Path, redis: dict[str, Any]) -> dict[str, Any]:
        """SQLite under ``tmp_path`` and the Redis on ``redis["port"]``, the suite or app seeded."""
        settings = {"sqlite_path": str(tmp_path / "pighand.sqlite3"), "redis_host": "127.0.0.1",
                    "redis_port": redis["port"]}
        seed(settings, (self.platform, self.key, self.secret))
        return settings

    def deploy(self, stack: ExitStack, fake: FakeT, settings: dict[str, Any], tmp_path: Path,
               **extra: Any) -> Deployment[FakeT]:
        """Two instances of two workers, stopped with ``stack``; the fake pushes to the first."""
        options: dict[str, Any] = {self.api_base: fake.base_url, **COMMON, **extra, **settings}
        servers = [stack.enter_context(Server(tmp_path, workers=2, **options)) for _ in range(2)]
        fake.set_callback_url(self.key, servers[0].base_url + self.callback)
        return Deployment(self, fake, settings, servers)

    def deployed(self, fake: FakeT, tmp_path: Path, redis: dict[str, Any]) -> Iterator[Deployment[FakeT]]:
        """For a fixture to yield from: :meth:`deploy` on :meth:`settings`, stopped after the test."""
        settings = self.settings(tmp_path, redis)
        with ExitStack() as stack:
            yield self.deploy(stack, fake, settings, tmp_path)

    @contextmanager
    def scheduled(self, fake: FakeT, settings: dict[str, Any], tmp_path: Path) -> Iterator[Deployment[FakeT]]:
        """One instance of two workers whose scheduler ticks every 2 s."""
        options: dict[str, Any] = {self.api_base: fake.base_url, **settings}
        with Server(tmp_path, workers=2, is_enable_schedule=True, corn_interval=2, **options) as server:
            fake.set_callback_url(self.key, server.base_url + self.callback)
            yield Deployment(self, fake, settings, [server])


@dataclass
class Deployment(Generic[FakeT]):
    family: Family
    fake: FakeT
    settings: dict[str, Any]
    servers: list[Server]

    @property
    def urls(self) -> list[str]:
        return [s.base_url for s in self.servers]

    def logs(self) -> str:
        return "\n".join(s.log()[-3000:] for s in self.servers)

    def onboard(self, grant: Callable[[], Any]) -> None:
        """A ticket pushed, then ``grant()`` pushes a corp's or tenant's
        authorization: both taken."""
        assert self.fake.push_ticket(self.family.key).ok, self.logs()
        assert grant().ok, self.logs()

    def container(self) -> Any:
        """The service's parts, as an in-process app on the same settings sees them."""
        app = create_app(overrides={**self.settings, self.family.api_base: self.fake.base_url,
                                    "is_enable_schedule": False, "auth_required": False})
        return app.extensions["pighand"]

    def get(self, instance: int, *, path: str | None = None, timeout: float = 10) -> requests.Response:
        return requests.get(self.urls[instance] + (path or self.family.path), timeout=timeout)

    def token(self) -> str:
        """The token, from the first instance, which must answer 200."""
        answer = self.get(0)
        assert answer.status_code == 200, self.logs()
        return str(envelope(answer)["data"])

    def cold_gets(self, count: int = 200, *, path: str | None = None) -> list[requests.Response]:
        """``count`` GETs 64 at a time, every other one to each instance."""
        with ThreadPoolExecutor(64) as pool:
            return list(pool.map(lambda i: self.get(i % 2, path=path, timeout=30), range(count)))

    def one_get_each(self) -> list[requests.Response]:
        return [self.get(instance, timeout=15) for instance in range(len(self.servers))]

    def one_token(self, answers: list[requests.Response]) -> str:
        """The one token all ``answers`` carry; every one must be 200."""
        assert [a.status_code for a in answers] == [200] * len(answers), self.logs()
        tokens = {envelope(a)["data"] for a in answers}
        assert len(tokens) == 1, tokens
        return str(tokens.pop())

    def fresh_gets(self, pool: ThreadPoolExecutor, count: int) -> list[tuple[str, str, int]]:
        """(instance, worker, status) of ``count`` GETs at once per instance,
        each on its own connection; the worker is told apart by its request ids."""
        def one(url: str) -> tuple[str, str, int]:
            answer = requests.get(url + self.family.path, timeout=10, headers={"Connection": "close"})
            return url, answer.headers["X-Request-Id"][:12], answer.status_code

        return list(pool.map(one, [url for url in self.urls for _ in range(count)]))

    def withdraw(self, push: Callable[[], Any]) -> tuple[float, dict[str, set[str]]]:
        """Once every worker serves the token, ``push()`` (a corp's removal)
        is taken: the seconds from then until a whole round of fresh GETs is
        404 (no round may start 5 s after it), and the workers of each
        instance seen answering 404 over three rounds more."""
        with ThreadPoolExecutor(24) as pool:
            warm = self.fresh_gets(pool, 12)
            assert {status for _, _, status in warm} == {200}, self.logs()
            assert push().ok, self.logs()
            return self._until_404_everywhere(pool, since=time.monotonic())

    def _until_404_everywhere(self, pool: ThreadPoolExecutor, since: float) -> tuple[float, dict[str, set[str]]]:
        while True:
            answers = self.fresh_gets(pool, 12)
            if {status for _, _, status in answers} == {404}:
                break
            assert time.monotonic() - since < 5, answers
        took = time.monotonic() - since
        workers: dict[str, set[str]] = {url: set() for url in self.urls}
        for _ in range(3):
            for url, worker, status in self.fresh_gets(pool, 12):
                assert status == 404
                workers[url].add(worker)
        return took, workers

    def scheduled_calls(self, path: str, *, at_least: int) -> list[float]:
        """When ``path`` was called over 9 s without a request (so every call
        is the scheduler's), checked to be one worker per 2 s tick."""
        time.sleep(9)
        times = [c["time"] for c in self.fake.find(path)]
        assert len(times) >= at_least, self.logs()
        # One worker per tick (two acting alone would call twice per tick).
        assert all(b - a > 1.5 for a, b in zip(times, times[1:], strict=False)), (times, self.logs())
        return times


def flushall(redis_cli: str, redis: dict[str, Any]) -> None:
    """Empty the Redis on ``redis["port"]`` with ``redis_cli``."""
    flushed = subprocess.run([redis_cli, "-p", str(redis["port"]), "FLUSHALL"], capture_output=True, text=True,
                             timeout=10)
    assert flushed.returncode == 0 and flushed.stdout.strip() == "OK", flushed
