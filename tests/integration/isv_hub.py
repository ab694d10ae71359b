"""What the third-party (ISV) integration tests share: the shipped server, one
worker, in front of a fake platform that pushes to its callback URLs, and the
looks into its stores and its log that the tests of DingTalk suites, WeCom
suites and Feishu store apps make. Each test module subclasses :class:`Hub`
with its platform's own steps (a ticket, an install) and secrets."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import requests

from pighand_token.app import create_app
from tests.conftest import Server
from tests.e2e.test_workers import seed


class PushingFake(Protocol):
    """A fake platform that pushes events to a callback URL it is given."""

    @property
    def base_url(self) -> str: ...

    def set_callback_url(self, key: str, url: str | None, /) -> None: ...


FakeT = TypeVar("FakeT", bound=PushingFake)


def sqlite_settings(tmp_path: Path, *credentials: tuple[str, str, str]) -> dict[str, Any]:
    """A SQLite store under ``tmp_path`` holding ``credentials`` (platform, appid, secret)."""
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "pighand.sqlite3")}
    if credentials:
        seed(settings, *credentials)
    return settings


@dataclass
class Hub(Generic[FakeT]):
    """The shipped server running against ``fake`` on ``settings``."""

    #: The setting that points the server at the fake, e.g. "wecom_api_base".
    api_base: ClassVar[str]

    fake: FakeT
    server: Server
    settings: dict[str, Any]

    @classmethod
    @contextmanager
    def serve(cls, fake: FakeT, tmp_path: Path, settings: dict[str, Any], callbacks: Mapping[str, str],
              **options: Any) -> Iterator[Self]:
        """One worker, no scheduler; the fake pushes for each key of
        ``callbacks`` to the callback path it maps to."""
        server_options: dict[str, Any] = {cls.api_base: fake.base_url, "is_enable_schedule": False, **options,
                                          **settings}
        with Server(tmp_path, workers=1, **server_options) as server:
            for key, path in callbacks.items():
                fake.set_callback_url(key, server.base_url + path)
            yield cls(fake, server, settings)

    def url(self, path: str) -> str:
        return self.server.base_url + path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url(path), timeout=15, **kwargs)

    def container(self) -> Any:
        """The service's stores, as an in-process app on the same settings sees them."""
        app = create_app(overrides={**self.settings, self.api_base: self.fake.base_url,
                                    "is_enable_schedule": False, "auth_required": False})
        return app.extensions["pighand"]

    def secrets(self) -> list[str]:
        """Everything that must never leave the service."""
        raise NotImplementedError

    def assert_no_secret_in_log(self) -> None:
        text = self.server.log()
        leaked = [s[:6] + "..." for s in self.secrets() if s in text]
        assert not leaked, leaked
