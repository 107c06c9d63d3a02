"""The monitor step reads the gateway's request log and reports drift per feature."""

from __future__ import annotations

import pytest

from pyfunc.profile import build_profile
from steps.generate import generate_listings
from steps.monitor import drift_report, recent_columns
from steps.tracking import StepError
from tests.support.traffic import write_log


@pytest.fixture(scope="module")
def reference() -> dict:
    return build_profile(generate_listings(4000, seed=1, dirty=False))["reference"]


def test_only_successful_rows_are_read_newest_last_and_normalized(tmp_path):
    log = tmp_path / "requests.jsonl"
    old, new = generate_listings(30, 2, dirty=False), generate_listings(20, 3, dirty=False)
    new.loc[0, "sector"] = "Las Condes "
    write_log(log, [old])
    write_log(log, [generate_listings(5, 4, dirty=False)], status=400)
    write_log(log, [new])
    with log.open("a") as torn:
        torn.write('{"status": 200, "features": {"type": ["ca')  # a torn last line

    columns = recent_columns(log, last_rows=25)

    assert columns["net_area"] == old["net_area"].tolist()[-5:] + new["net_area"].tolist()
    assert columns["sector"][5] == "las condes"


def test_a_missing_log_is_named(tmp_path):
    with pytest.raises(StepError, match=r"request log .*nope\.jsonl does not exist"):
        recent_columns(tmp_path / "nope.jsonl", 100)


def test_the_report_tells_drifted_from_undrifted_traffic(tmp_path, reference):
    like_training = generate_listings(600, seed=5, dirty=False)
    shifted = like_training.assign(net_area=like_training["net_area"] * 2.5)
    calm, moved = tmp_path / "calm.jsonl", tmp_path / "moved.jsonl"
    write_log(calm, [like_training.iloc[:300], like_training.iloc[300:]])
    write_log(moved, [shifted])

    calm_report = drift_report(reference, recent_columns(calm, 5000), "models:/m/1")
    moved_report = drift_report(reference, recent_columns(moved, 5000), "models:/m/1")

    assert calm_report["rows"] == 600 and calm_report["drifted"] == []
    assert moved_report["drifted"] == ["net_area"]
