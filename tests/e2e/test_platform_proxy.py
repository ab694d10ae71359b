"""The proxy through the shipped server (``pighand-token serve``): 20 MB
bodies streamed both ways without being held in the worker's memory, and
a rejected token replaced once across workers, every replay carrying the
replacement."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Server
from tests.e2e.test_workers import seed, storage
from tests.fakes.server import Request
from tests.fakes.wechat import API_PATH, STABLE_PATH, FakeWeChat

APP = "wx_app_1"
SECRET = "s3cr3t-wx-1"
UPLOAD_PATH = "/cgi-bin/media/upload"
DOWNLOAD_PATH = "/cgi-bin/media/get"
SIZE = 20 * 1024 * 1024
MiB = 1024 * 1024


def _media(wechat: FakeWeChat, payload: bytes) -> None:
    def upload(req: Request) -> Any:
        if wechat.token_status(req.query.get("access_token", "")):
            return 200, {"errcode": 40001, "errmsg": "invalid credential"}
        req.note(size=len(req.body), chunked="chunked" in req.headers.get("transfer-encoding", ""))
        return 200, {"errcode": 0, "size": len(req.body), "sha256": hashlib.sha256(req.body).hexdigest()}

    def download(req: Request) -> Any:
        if wechat.token_status(req.query.get("access_token", "")):
            return 200, {"errcode": 40001, "errmsg": "invalid credential"}
        return 200, payload, {"Content-Disposition": 'attachment; filename="big.bin"'}

    wechat.add_route("POST", UPLOAD_PATH, upload)
    wechat.add_route("GET", DOWNLOAD_PATH, download)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in kB."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_20_mb_upload_and_download_stream_through_without_being_held_in_memory(tmp_path: Path,
                                                                               wechat: FakeWeChat) -> None:
    payload = bytes(range(256)) * (SIZE // 256)
    digest = hashlib.sha256(payload).hexdigest()
    _media(wechat, payload)
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "p.sqlite3")}
    seed(settings, (APP, SECRET))
    with Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                **settings) as server:
        base = f"{server.base_url}/proxy/wechat/{APP}"
        # Warm: the token, the imports and the connection pools are in place before measuring.
        assert requests.get(base + API_PATH, timeout=10).status_code == 200
        assert requests.post(base + UPLOAD_PATH, data=b"x" * (2 * MiB), timeout=10).json()["errcode"] == 0
        (pid,) = server.worker_pids()
        before = memory_kb(pid)["VmRSS"]

        uploaded = requests.post(base + UPLOAD_PATH + "?type=image", data=payload, timeout=60)
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json() == {"errcode": 0, "size": SIZE, "sha256": digest}
        chunked = requests.post(base + UPLOAD_PATH, data=_chunks(payload), timeout=60)
        assert chunked.json() == {"errcode": 0, "size": SIZE, "sha256": digest}
        assert [c["chunked"] for c in wechat.find(UPLOAD_PATH)][-2:] == [False, True]

        with requests.get(base + DOWNLOAD_PATH + "?media_id=m1", stream=True, timeout=60) as download:
            assert download.status_code == 200
            assert download.headers["Content-Length"] == str(SIZE)
            assert download.headers["Content-Type"] == "application/octet-stream"
            assert download.headers["Content-Disposition"] == 'attachment; filename="big.bin"'
            received = hashlib.sha256()
            for chunk in download.iter_content(256 * 1024):
                received.update(chunk)
        assert received.hexdigest() == digest

        peak = memory_kb(pid)["VmHWM"]
        log = server.log()
    growth_mb = (peak - before) / 1024
    assert growth_mb < 10, f"the worker's peak RSS grew by {growth_mb:.1f} MB moving 20 MB bodies"
    token = wechat.current_token(APP)
    assert token and token not in log
    assert '"kind": "proxy_call"' in log


def test_bodies_over_proxy_max_body_are_413_declared_or_chunked(tmp_path: Path, wechat: FakeWeChat) -> None:
    _media(wechat, b"")
    settings: dict[str, Any] = {"sqlite_path": str(tmp_path / "p.sqlite3")}
    seed(settings, (APP, SECRET))
    with Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                proxy_max_body=3 * MiB, **settings) as server:
        base = f"{server.base_url}/proxy/wechat/{APP}"
        body = b"y" * (4 * MiB)
        declared = requests.post(base + UPLOAD_PATH, data=body, timeout=30)
        assert declared.status_code == 413 and declared.json()["code"] == 413
        assert wechat.count(UPLOAD_PATH) == 0
        chunked = requests.post(base + UPLOAD_PATH, data=_chunks(body), timeout=30)
        assert chunked.status_code == 413 and chunked.json()["code"] == 413
        # Nothing whole reached the platform.
        assert all(c["status"] != 200 or c.get("size", 0) < len(body) for c in wechat.find(UPLOAD_PATH))
        assert requests.post(base + UPLOAD_PATH, data=b"z" * MiB, timeout=30).json()["size"] == MiB


@pytest.mark.parametrize("kind", ["sqlite", "redis+sqlite"])
def test_a_token_rejected_on_two_workers_is_replaced_once_and_every_replay_carries_the_replacement(
        tmp_path: Path, wechat: FakeWeChat, kind: str, request: pytest.FixtureRequest) -> None:
    settings = storage(kind, tmp_path, request)
    seed(settings, (APP, SECRET))
    with Server(tmp_path, workers=2, threads=8, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                **settings) as server:
        url = f"{server.base_url}/proxy/wechat/{APP}{API_PATH}"
        # Both workers hold the token in memory.
        for _ in range(20):
            assert requests.get(url, timeout=10).json()["errcode"] == 0
        old = wechat.current_token(APP)
        assert old is not None
        wechat.invalidate(old)
        wechat.clear_calls()
        answers: list[dict[str, Any]] = []
        start = threading.Barrier(24)

        def call() -> None:
            session = requests.Session()  # a connection of its own: spread over the workers
            start.wait()
            answers.append(session.get(url, timeout=30).json())

        threads = [threading.Thread(target=call) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        log = server.log()
    new = wechat.current_token(APP)
    assert new is not None and new != old
    assert [a["errcode"] for a in answers] == [0] * 24
    # One replacement for all of them: one force_refresh (after the normal call handed the old one back).
    assert sum(1 for c in wechat.find(STABLE_PATH) if c["force_refresh"]) == 1
    sent = wechat.find(API_PATH)
    assert {c["token"] for c in sent} <= {old, new}
    # Every call the platform accepted carried the replacement; the old token only ever drew 40001.
    assert all(c["token"] == new for c in sent if c["errcode"] == 0)
    assert all(c["errcode"] == 40001 for c in sent if c["token"] == old)
    assert old not in log and new not in log
