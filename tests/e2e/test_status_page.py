"""The status page as a person sees it: the shipped server serving /, loaded in headless
Chromium (Debian's ``chromium`` package), with a screenshot kept under the
test's tmp dir and in tests/artifacts/status_page.png."""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, Server
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

CHROMIUM_TIMEOUT_S = 20
ARTIFACT = ROOT / "tests" / "artifacts" / "status_page.png"
EGRESS_IP = "203.0.113.7"
SECRETS = {"wx_app_1": "s3cr3t-wx-1", "wx_bad_secret": "not-the-secret", "wx_not_whitelisted": "s3cr3t-wx-3",
           "wx_short_life": "s3cr3t-wx-4", "wx_never_asked": "s3cr3t-wx-5"}


def _find_chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)


def chromium() -> str:
    """Debian's chromium; installed here when missing (like the test suite
    starts MariaDB and Redis), and a failure, never a skip, when it cannot be."""
    found = _find_chromium()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
        found = _find_chromium()
    if found is None:
        pytest.fail("Chromium is needed for the status page test and could not be installed: "
                    "apt-get install -y chromium (Debian's package, /usr/bin/chromium)")
    return found


def load_in_chromium(browser: str, url: str, screenshot: Path, profile: Path) -> str:
    """Render ``url`` headless; save a screenshot; return the rendered DOM."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--dump-dom",
               "--window-size=1280,900", "--virtual-time-budget=3000", url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"Chromium did not render {url} within {CHROMIUM_TIMEOUT_S} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"Chromium exited {proc.returncode}:\n{err.decode(errors='replace')[-3000:]}"
    return out.decode()


def visible_text(dom: str) -> str:
    body = re.sub(r"<style.*?</style>|<head.*?</head>", "", dom, flags=re.S)
    body = re.sub(r"</?(?:span|code|strong)\b[^>]*>", "", body)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_status_page_in_headless_chromium(tmp_path: Path, wechat: FakeWeChat,
                                          request: pytest.FixtureRequest) -> None:
    wechat.add_app("wx_bad_secret", "the-real-secret")
    wechat.add_app("wx_not_whitelisted", SECRETS["wx_not_whitelisted"], whitelist_error_ip=EGRESS_IP)
    wechat.add_app("wx_short_life", SECRETS["wx_short_life"], expires_in=20)
    browser = chromium()  # installed first when missing, outside the timed part below
    settings = storage("sqlite", tmp_path, request)
    seed(settings, *SECRETS.items())
    with Server(tmp_path, workers=2, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                  corn_interval=300, **settings) as server:
        # A 20 s token is inside its margin (half its life) from 10 s to 20 s.
        short = requests.get(f"{server.base_url}/token/wechat/wx_short_life", timeout=10)
        fetched = time.monotonic()
        assert short.status_code == 200, server.log()
        token = requests.get(f"{server.base_url}/token/wechat/wx_app_1", timeout=10)
        assert token.status_code == 200, server.log()
        for appid in ("wx_bad_secret", "wx_not_whitelisted"):
            assert requests.get(f"{server.base_url}/token/wechat/{appid}", timeout=10).status_code == 502
        tokens = {short.json()["data"], token.json()["data"]}

        plain = requests.get(server.base_url + "/", timeout=10)
        assert plain.status_code == 200
        assert plain.headers["Content-Type"] == "text/html; charset=utf-8"
        assert plain.headers["Cache-Control"] == "no-store"

        time.sleep(max(0.0, fetched + 10.5 - time.monotonic()))
        shot = tmp_path / "status_page.png"
        dom = load_in_chromium(browser, server.base_url + "/", shot, tmp_path / "chromium-profile")
        assert time.monotonic() - fetched < 20, "too slow to see wx_short_life inside its margin"

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    assert png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"

    text = visible_text(dom)
    assert "Token status" in text
    for appid in SECRETS:
        assert appid in text
    assert "5 tokens" in text
    for count, state in ((1, "valid"), (1, "inside margin"), (2, "failing"), (1, "missing")):
        assert f"{count} {state}" in text
    for appid, state in (("wx_app_1", "valid"), ("wx_short_life", "inside margin"), ("wx_bad_secret", "failing"),
                         ("wx_not_whitelisted", "failing"), ("wx_never_asked", "missing")):
        assert re.search(rf"{appid} {state} ", text), f"{appid} is not shown as {state}"
    assert "40125 invalid appsecret" in text
    assert "40164" in text
    assert f"Egress IP {EGRESS_IP}: add this IP to the platform's whitelist" in text
    hint = "add this IP to the platform's whitelist"
    assert f"wechat refused calls from {EGRESS_IP} (wx_not_whitelisted): {hint}" in text
    for secret in (*SECRETS.values(), "the-real-secret"):
        assert secret not in dom
    for value in tokens:
        assert value[:16] not in dom
