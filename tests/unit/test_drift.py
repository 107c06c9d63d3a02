"""Drift scores tell traffic drawn like the training data from shifted traffic."""

from __future__ import annotations

import pytest

from pyfunc.drift import DRIFT_THRESHOLD, MIN_ROWS, drifted, feature_drift, psi
from pyfunc.profile import build_profile
from pyfunc.schema import FEATURE_NAMES
from steps.generate import generate_listings


@pytest.fixture(scope="module")
def reference() -> dict:
    return build_profile(generate_listings(5000, seed=1, dirty=False))["reference"]


def columns(frame) -> dict[str, list]:
    return {name: frame[name].tolist() for name in FEATURE_NAMES}


def test_identical_shares_score_zero_and_shifted_shares_score_positive():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.5, 0.5], [0.9, 0.1]) > DRIFT_THRESHOLD


def test_traffic_like_the_training_data_does_not_drift(reference):
    scores = feature_drift(reference, columns(generate_listings(1000, seed=2, dirty=False)))
    assert set(scores) == set(FEATURE_NAMES)
    assert drifted(scores) == [], scores


def test_bigger_listings_and_another_sector_mix_drift(reference):
    traffic = generate_listings(1000, seed=3, dirty=False)
    traffic["net_usable_area"] *= 1.8
    traffic.loc[traffic.index[:700], "sector"] = "nunoa"
    scores = feature_drift(reference, columns(traffic))
    assert {"net_usable_area", "sector"} <= set(drifted(scores)), scores
    assert scores["latitude"] < DRIFT_THRESHOLD


def test_unseen_categories_count_as_drift(reference):
    traffic = generate_listings(500, seed=4, dirty=False)
    traffic["sector"] = "puente alto"
    assert "sector" in drifted(feature_drift(reference, columns(traffic)))


def test_too_few_rows_give_no_score(reference):
    traffic = generate_listings(MIN_ROWS - 1, seed=5, dirty=False)
    assert feature_drift(reference, columns(traffic)) == {}
