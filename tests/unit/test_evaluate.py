"""steps.evaluate: metrics computed the right way round, the price 0 rows, and the verdict."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from config.settings import Settings
from pyfunc.schema import (
    FEATURE_NAMES,
    FLAG_COLUMN,
    HIGH_COLUMN,
    LOW_COLUMN,
    PREDICTION_COLUMN,
    TARGET,
)
from steps.evaluate import champion_mae, evaluate, regression_metrics, sector_metrics, verdict
from steps.tracking import StepError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from tests.support.mlflow_store import Store

SCORED = Settings.from_env({"MODEL_NAME": "scored"})

TRUE = [100.0, 200.0, 400.0, 500.0]
PREDICTED = [110.0, 180.0, 400.0, 600.0]
# By hand: errors 10, -20, 0, 100.
EXPECTED = {
    "test_mae": (10 + 20 + 0 + 100) / 4,
    "test_rmse": math.sqrt((10**2 + 20**2 + 0 + 100**2) / 4),
    # Relative to the TRUE price: 10/100, 20/200, 0/400, 100/500.
    "test_mape": (0.1 + 0.1 + 0.0 + 0.2) / 4,
    # 1 - SS_res / SS_tot with mean(TRUE) = 300.
    "test_r2": 1 - (10**2 + 20**2 + 0 + 100**2) / (200**2 + 100**2 + 100**2 + 200**2),
    "test_rows": 4,
    "test_rows_excluded_nonpositive_price": 0,
}


def test_metrics_match_hand_computed_values() -> None:
    assert regression_metrics(np.array(TRUE), np.array(PREDICTED)) == pytest.approx(EXPECTED)


def test_mape_divides_by_the_true_price_not_the_prediction() -> None:
    # The notebook called metric(y_pred, y_true): MAPE would then be relative to the predictions.
    swapped = np.mean(np.abs(np.subtract(TRUE, PREDICTED)) / np.array(PREDICTED))
    assert swapped == pytest.approx(0.0922, abs=1e-4)

    mape = regression_metrics(TRUE, PREDICTED)["test_mape"]

    assert mape == pytest.approx(0.1)
    assert regression_metrics(PREDICTED, TRUE)["test_mape"] == pytest.approx(swapped)


def test_r2_is_computed_against_the_true_price() -> None:
    assert regression_metrics(TRUE, PREDICTED)["test_r2"] == pytest.approx(0.895)
    assert regression_metrics(PREDICTED, TRUE)["test_r2"] != pytest.approx(0.895)


def test_nonpositive_prices_are_excluded_and_counted() -> None:
    true = pd.Series([*TRUE, 0.0, -5.0], index=[7, 3, 9, 1, 4, 2])
    predicted = np.array([*PREDICTED, 9_000.0, 12_000.0])

    metrics = regression_metrics(true, predicted)

    assert metrics == pytest.approx({**EXPECTED, "test_rows_excluded_nonpositive_price": 2})
    assert math.isfinite(metrics["test_mape"])


def test_all_nonpositive_prices_leave_nothing_to_evaluate() -> None:
    with pytest.raises(StepError, match=r"^no test row has a positive price: nothing to evaluate$"):
        regression_metrics([0.0, -1.0], [10.0, 20.0])


class _Fixed:
    """A pyfunc-like model answering fixed prices; remembers the columns it was sent."""

    def __init__(self, prices: list[float], ranges: dict[str, list[float]] | None = None):
        self.prices = prices
        self.ranges = ranges or {}
        self.columns: list[str] = []

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.columns = list(frame.columns)
        return pd.DataFrame(
            {PREDICTION_COLUMN: self.prices, **self.ranges, FLAG_COLUMN: [""] * len(frame)}
        )


def test_evaluate_scores_by_sector_and_never_sends_the_price(listings: pd.DataFrame) -> None:
    test = listings.head(4).assign(sector=["nunoa", "vitacura", "nunoa", "vitacura"], price=TRUE)
    model = _Fixed(PREDICTED)

    result = evaluate(model, test)

    assert model.columns == list(FEATURE_NAMES)
    assert result.metrics == pytest.approx(EXPECTED)
    np.testing.assert_array_equal(result.predictions, PREDICTED)
    pd.testing.assert_frame_equal(
        result.by_sector,
        pd.DataFrame({"sector": ["nunoa", "vitacura"], "mae": [5.0, 60.0], "rows": [2, 2]}),
    )


def test_evaluate_measures_the_range_overall_and_by_sector(listings: pd.DataFrame) -> None:
    test = listings.head(4).assign(sector=["nunoa", "vitacura", "nunoa", "vitacura"], price=TRUE)
    # TRUE is 100, 200, 400, 500: inside, below, on the high bound, inside.
    ranges = {LOW_COLUMN: [90.0, 210.0, 300.0, 450.0], HIGH_COLUMN: [130.0, 250.0, 400.0, 720.0]}

    result = evaluate(_Fixed(PREDICTED, ranges), test)

    # Widths (high - low) / price: 40/110, 40/180, 100/400, 270/600.
    widths = [40 / 110, 40 / 180, 100 / 400, 270 / 600]
    assert result.metrics == pytest.approx(
        EXPECTED | {"test_interval_coverage": 0.75, "test_interval_width": np.median(widths)}
    )
    assert result.by_sector["interval_coverage"].tolist() == [1.0, 0.5]
    assert sector_metrics(result.by_sector) == pytest.approx(
        {
            "test_mae_nunoa": 5.0,
            "test_mae_vitacura": 60.0,
            "test_interval_coverage_nunoa": 1.0,
            "test_interval_coverage_vitacura": 0.5,
            "test_interval_width_nunoa": (widths[0] + widths[2]) / 2,
            "test_interval_width_vitacura": (widths[1] + widths[3]) / 2,
        }
    )


@pytest.mark.parametrize(
    ("mae", "champion", "tolerance", "expected"),
    [
        pytest.param(1_000.0, None, 0.02, "no_champion", id="no-champion"),
        pytest.param(900.0, 1_000.0, 0.02, "better", id="better"),
        pytest.param(1_000.0, 1_000.0, 0.02, "better", id="equal-is-better"),
        pytest.param(1_010.0, 1_000.0, 0.02, "within_tolerance", id="within-tolerance"),
        pytest.param(1_020.0, 1_000.0, 0.02, "within_tolerance", id="exactly-at-tolerance"),
        pytest.param(1_020.5, 1_000.0, 0.02, "worse", id="just-over-tolerance"),
        pytest.param(1_500.0, 1_000.0, 0.02, "worse", id="worse"),
        pytest.param(1_000.5, 1_000.0, 0.0, "worse", id="no-tolerance"),
        pytest.param(1_500.0, 1_000.0, 0.5, "within_tolerance", id="large-tolerance"),
    ],
)
def test_verdict(mae: float, champion: float | None, tolerance: float, expected: str) -> None:
    assert verdict(mae, champion, tolerance) == expected


@pytest.fixture(scope="module")
def champion_store(
    mlflow_store: Store, small_pipeline: Pipeline, few_listings: pd.DataFrame
) -> Store:
    """Versions 1 and 2 of model `scored`; version 1 is the champion."""
    for _ in range(2):
        mlflow_store.register(small_pipeline, few_listings, "scored")
    mlflow_store.client().set_registered_model_alias("scored", "champion", "1")
    return mlflow_store


def test_champion_is_scored_on_the_same_rows(
    champion_store: Store, small_pipeline: Pipeline, few_listings: pd.DataFrame
) -> None:
    test = few_listings.tail(50)

    version, mae = champion_mae(SCORED, "2", test)

    assert str(version) == "1"
    predicted = small_pipeline.predict(test[list(FEATURE_NAMES)])
    assert mae == pytest.approx(np.mean(np.abs(test[TARGET.name] - predicted)))


def test_the_champion_is_not_its_own_champion(
    champion_store: Store, few_listings: pd.DataFrame
) -> None:
    # run_evaluate passes the version as a string; MLflow answers the alias with an int.
    found = champion_mae(SCORED, "1", few_listings.tail(50))

    assert found == (None, None)


def test_no_champion_alias_means_no_champion(
    champion_store: Store, few_listings: pd.DataFrame
) -> None:
    settings = Settings.from_env({"MODEL_NAME": "scored", "MODEL_ALIAS": "nobody"})

    assert champion_mae(settings, "2", few_listings) == (None, None)
