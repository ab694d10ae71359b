"""What a process loads: a worker on the embedded defaults (SQLite, no
Redis) keeps redis-py and Alembic out of its memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, clean_env

PROBE = """
import sys
from pighand_token.app import create_app
app = create_app()
answer = app.test_client().get("/readyz")
assert answer.status_code == 200, answer.get_data(as_text=True)
print(sorted({m.split(".")[0] for m in sys.modules} & {"redis", "alembic", "mako"}))
"""


def run_probe(tmp_path: Path, **settings: str) -> str:
    env = clean_env(sqlite_path=str(tmp_path / "pighand.sqlite3"), **settings)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_the_embedded_defaults_load_neither_redis_nor_alembic_once_the_schema_is_current(tmp_path: Path) -> None:
    # The first start upgrades the new database (Alembic is needed then).
    assert run_probe(tmp_path) == "['alembic', 'mako']"
    assert run_probe(tmp_path) == "[]"


def test_redis_is_loaded_when_it_is_configured(tmp_path: Path, redis_server: dict[str, Any]) -> None:
    run_probe(tmp_path)
    assert run_probe(tmp_path, redis_host=redis_server["host"], redis_port=str(redis_server["port"])) == "['redis']"
