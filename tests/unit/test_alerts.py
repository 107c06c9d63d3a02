"""The alerting rules (docker/prometheus/alerts.yml) under promtool's unit tests, and the
Alertmanager configuration under amtool: Debian's prometheus and prometheus-alertmanager
packages, offline, no server started."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config.settings import PROJECT_DIR
from pyfunc.drift import DRIFT_THRESHOLD
from tests.support.promql import known_names, metric_names

PROMETHEUS_DIR = PROJECT_DIR / "docker" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
ALERTMANAGER_CONFIG = PROJECT_DIR / "docker" / "alertmanager" / "alertmanager.yml"
README = PROJECT_DIR / "README.md"
INSTALL = "apt-get update && apt-get install -y prometheus prometheus-alertmanager"


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL}")
    return found


def run(*command: str | Path, cwd: Path = PROJECT_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_promtool_unit_tests_of_every_rule_pass():
    result = run(tool("promtool"), "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_quiet():
    cases: dict[str, set[bool]] = {name: set() for name in alerts()}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            assert case["alertname"] in cases, f"no such alert: {case['alertname']}"
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {name: seen for name, seen in cases.items() if seen != {True, False}} == {}


def test_the_unit_tests_fail_when_a_threshold_changes(tmp_path):
    """The cases pin the thresholds: a rules file with the drift threshold doubled fails."""
    expr = alerts()["FeatureDrift"]["expr"]
    changed = RULES.read_text().replace(expr, expr.replace("0.25", "0.5"))
    assert changed != RULES.read_text()
    (tmp_path / "alerts.yml").write_text(changed)
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    result = run(tool("promtool"), "test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert "alertname: FeatureDrift" in result.stdout + result.stderr


def test_prometheus_config_loads_the_rules_and_points_at_alertmanager():
    result = run(tool("promtool"), "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Checking {PROMETHEUS_DIR / 'alerts.yml'}" in result.stdout
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == [RULES.name]
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["alertmanager:9093"]}]


def test_rules_query_only_metrics_the_project_exposes():
    known = known_names()
    for name, rule in alerts().items():
        used = metric_names(rule["expr"])
        assert used, f"{name}: no metric in {rule['expr']}"
        assert used <= known, f"{name}: unknown metric(s) {sorted(used - known)}"


def test_drift_alert_uses_the_models_drift_threshold():
    assert alerts()["FeatureDrift"]["expr"].rstrip().endswith(f"> {DRIFT_THRESHOLD:g}")


def test_every_alert_has_a_severity_a_summary_and_a_description():
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_readme_explains_every_alert():
    section = README.read_text().split("### Alerts", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in alerts() if f"`{name}`" not in section]
    assert not missing, f"README's Alerts section does not explain {missing}"


def test_alertmanager_config_is_valid_and_sends_to_a_webhook():
    result = run(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    (webhook,) = receivers[config["route"]["receiver"]]["webhook_configs"]
    assert webhook["url"].startswith("http") and webhook["send_resolved"] is True
    inhibited = {
        alertname
        for rule in config["inhibit_rules"]
        for alertname in (
            m.split("=", 1)[1].strip('"') for m in rule["source_matchers"] + rule["target_matchers"]
        )
    }
    assert inhibited <= set(alerts())
