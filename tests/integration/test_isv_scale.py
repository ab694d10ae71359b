"""A component with 10,000 authorizers on real SQL: what the scheduler asks
the store for each tick, and the status listing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from pighand_token.adapters.third_party import SqlAccountGrants
from pighand_token.bootstrap import Container, bootstrap
from pighand_token.config import load_settings
from pighand_token.core.domain import AccountGrant, Credential, Token, TokenKey
from pighand_token.providers.third_party import AppSecrets

COMPONENT = "wxcomponent0001"
AUTHORIZERS = 10_000


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    settings = load_settings(overrides={"sqlite_path": str(tmp_path / "isv.sqlite3"), "redis_host": "",
                                        "is_enable_schedule": False}, environ={})
    container = bootstrap(settings)
    secrets = AppSecrets("component-secret", "callback-token", "a" * 43)
    container.credentials.add(Credential("wechat_component", COMPONENT, secrets.encode()))
    grants = SqlAccountGrants(container.db, container.cipher)
    now = time.time()
    with container.db.transaction():
        for i in range(AUTHORIZERS):
            grants.save(AccountGrant("wechat_authorizer", COMPONENT, f"wxauth{i:05d}", f"refresh-{i}", "{}", now, now))
    yield container
    container.db.close()


def statements(container: Container) -> list[str]:
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(container.db.engine(), "before_cursor_execute", note)
    return seen


def test_the_scheduled_set_of_ten_thousand_authorizers_is_one_query_per_component(container: Container) -> None:
    seen = statements(container)
    keys = container.service._scheduled()
    assert len(keys) == AUTHORIZERS + 1
    assert set(keys) == {TokenKey("wechat_component", COMPONENT)} | {
        TokenKey("wechat_authorizer", f"{COMPONENT}:wxauth{i:05d}") for i in range(AUTHORIZERS)}
    grant_reads = [s for s in seen if "account_grant" in s]
    # The credential keys, then the component's grants in one SELECT.
    assert len(grant_reads) == 1 and len(seen) == 2, seen


def test_status_of_ten_thousand_authorizers_lists_every_one(container: Container) -> None:
    now = time.time()
    container.service.install("wechat_authorizer", f"{COMPONENT}:wxauth00042", Token("tok", now + 7200, now))
    rows = container.service.status()
    assert len(rows) == AUTHORIZERS + 1
    states = {(r.platform, r.appid): r.state for r in rows}
    assert states[("wechat_authorizer", f"{COMPONENT}:wxauth00042")] == "valid"
    assert states[("wechat_authorizer", f"{COMPONENT}:wxauth00043")] == "missing"
