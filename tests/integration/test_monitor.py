"""`steps.monitor` against a real registered model: the reference is its training profile."""

from __future__ import annotations

import json

import pytest

from steps.generate import generate_listings
from tests.support.stack import run_step, store_env
from tests.support.traffic import write_log

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("scale", "drifted", "exit_code"), [(1.0, [], 0), (3.0, ["net_usable_area"], 3)]
)
def test_monitor_reports_drift_against_the_model_training_data(
    trained_store, tmp_path, scale, drifted, exit_code
):
    traffic = generate_listings(800, seed=11, dirty=False)
    traffic["net_usable_area"] = (traffic["net_usable_area"] * scale).clip(upper=5000)
    write_log(tmp_path / "requests.jsonl", [traffic])
    report = tmp_path / "drift.json"

    result = run_step(
        "steps.monitor",
        "--request-log",
        str(tmp_path / "requests.jsonl"),
        "--model-uri",
        "models:/property-friends@champion",
        "--output",
        str(report),
        "--fail-on-drift",
        env=store_env(trained_store),
        cwd=trained_store,
        check=False,
    )

    assert result.returncode == exit_code, result.stderr[-2000:]
    assert json.loads(report.read_text())["drifted"] == drifted


def test_monitor_with_too_few_rows_says_how_many_are_needed(trained_store, tmp_path):
    write_log(tmp_path / "requests.jsonl", [generate_listings(10, seed=12, dirty=False)])
    result = run_step(
        "steps.monitor",
        "--request-log",
        str(tmp_path / "requests.jsonl"),
        "--model-uri",
        "models:/property-friends@champion",
        env=store_env(trained_store),
        cwd=trained_store,
        check=False,
    )
    assert result.returncode == 1
    assert "only 10 priced rows in the request log; at least 100 are needed" in result.stderr
