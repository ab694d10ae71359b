"""The shipped alert rules (deploy/prometheus), checked by promtool and by a
real Prometheus scraping a served instance, and /metrics as Prometheus reads it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Gunicorn, Server, clean_env, free_port, require_binary, run_cli, stop_process
from tests.e2e.test_workers import seed, storage
from tests.fakes.wechat import FakeWeChat

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool", "prometheus"), *args], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=120)


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_severity_annotations_and_a_firing_and_a_quiet_unit_test() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert len(groups) == 1
    alerts = {rule["alert"]: rule for rule in groups[0]["rules"] if "alert" in rule}
    assert len(alerts) >= 8
    for name, rule in alerts.items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts) - fires == set(), "alerts without a case where they fire"
    assert set(alerts) - quiet == set(), "alerts without a case where they must stay quiet"


def families(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("server_class", [Server, Gunicorn], ids=["serve", "gunicorn"])
def test_a_fresh_served_instance_exports_the_scheduler_counters_at_zero_in_the_latest_format(
        server_class: type[Server], tmp_path: Path, wechat: FakeWeChat) -> None:
    with server_class(tmp_path, workers=2, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                      sqlite_path=str(tmp_path / "pighand.sqlite3")) as server:
        answer = requests.get(f"{server.base_url}/metrics", timeout=10)
    assert answer.status_code == 200
    # As prometheus-client names it, the format's version= included.
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples = families(answer.text)
    # No tick has run (the scheduler is off), yet every outcome is there at 0:
    # increase() then sees the first tick, the first error, the first failure.
    for outcome in ("ran", "skipped", "error"):
        assert samples[("pighand_scheduler_ticks_total", (("outcome", outcome),))] == 0
    assert samples[("pighand_scheduler_refresh_failures_total", ())] == 0


def wait_for(what: str, probe: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


class Prometheus:
    """A real prometheus server of a test's own, scraping every second and
    evaluating the shipped rules every second."""

    def __init__(self, folder: Path, target: str, key_file: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "pighand-token", "authorization": {"credentials_file": str(key_file)},
                                "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        log = open(self.folder / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [require_binary("prometheus", "prometheus"), f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for("prometheus to be ready", self.ready, timeout_s=15)
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(f"{self.base_url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=5).json()
        return list(answer["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(requests.get(f"{self.base_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"])

    def log(self) -> str:
        path = self.folder / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)


def test_prometheus_alerts_on_the_first_45009_of_a_served_instance(
        tmp_path: Path, wechat: FakeWeChat, request: pytest.FixtureRequest) -> None:
    wechat.daily_quota = 0  # the first token call answers 45009
    settings = storage("sqlite", tmp_path, request)
    seed(settings, ("wx_app_1", "s3cr3t-wx-1"))
    env = clean_env(**settings)
    key = run_cli("client", "add", "billing", "--all-apps", env=env).stdout.strip()
    key_file = tmp_path / "prometheus.key"
    key_file.write_text(run_cli("client", "add", "prometheus", "--app", "metrics", env=env).stdout.strip())
    with Server(tmp_path, workers=1, wechat_api_base=wechat.base_url, is_enable_schedule=False,
                auth_required=True, **settings) as server:
        folder = tmp_path / "prometheus"
        folder.mkdir()
        prometheus = Prometheus(folder, f"127.0.0.1:{server.port}", key_file)
        request.addfinalizer(prometheus.stop)
        prometheus.start()
        # Scraped with the metrics key, before any platform call.
        wait_for("a successful scrape", lambda: prometheus.query('up{job="pighand-token"} == 1'), timeout_s=15)
        assert prometheus.query("pighand_platform_calls_total") == []
        assert prometheus.query('pighand_scheduler_ticks_total{outcome="ran"} == 0')

        answer = requests.get(f"{server.base_url}/token/wechat/wx_app_1", headers={"X-Api-Key": key}, timeout=10)
        assert answer.status_code == 502 and "45009" in answer.json()["error"]

        # The errcode's series appears at 1: increase() alone would see nothing.
        def quota_alert() -> list[dict[str, Any]]:
            return [a for a in prometheus.alerts() if a["labels"]["alertname"] == "PighandWeChatQuotaExhausted"]

        alerts = wait_for("the quota alert", quota_alert, timeout_s=20)
        assert alerts[0]["state"] in ("pending", "firing")
        assert alerts[0]["labels"]["platform"] == "wechat" and alerts[0]["labels"]["errcode"] == "45009"
        assert alerts[0]["labels"]["severity"] == "critical"
        assert "clear_quota" in alerts[0]["annotations"]["description"]
        assert not [a for a in prometheus.alerts() if a["labels"]["alertname"] == "PighandPlatformCallsFailing"]
        assert key not in prometheus.log() and key_file.read_text() not in prometheus.log()
