"""steps.intervals: the range's arithmetic, its calibration on unseen rows, and its coverage."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_val_predict
from threadpoolctl import threadpool_limits

from pyfunc.model import PriceInterval
from pyfunc.schema import FEATURE_NAMES, HIGH_COLUMN, LOW_COLUMN, PREDICTION_COLUMN, TARGET
from steps.generate import VARIANTS, generate_splits
from steps.intervals import interval_hits, log_ratio_interval
from steps.params import Candidate, Params, Preset
from steps.train import build_pipeline, regressor


def calibrate(pipeline, train: pd.DataFrame, params: Params) -> PriceInterval:
    """The range from out-of-fold prices of a clone of `pipeline`, as train gets them from
    the search."""
    folds = KFold(params.cv_folds, shuffle=True, random_state=params.seed)
    actual = train[TARGET.name].to_numpy()
    predicted = cross_val_predict(
        clone(pipeline), train[list(FEATURE_NAMES)], actual, cv=folds, n_jobs=-1
    )
    return log_ratio_interval(actual, predicted, params.interval_coverage)


logger = logging.getLogger(__name__)

# log(actual / predicted) of 19 rows: -0.9, -0.8, ..., 0.9.
RATIOS = np.round(np.linspace(-0.9, 0.9, 19), 10)
PREDICTED = np.linspace(2_000.0, 40_000.0, 19)
FOREST = Preset("forest", False, False, (Candidate("RandomForestRegressor", {}),))


def test_the_range_is_the_outer_quantiles_of_the_log_ratios() -> None:
    actual = PREDICTED * np.exp(RATIOS[::-1])  # order of rows does not matter

    interval = log_ratio_interval(actual, PREDICTED, 0.8)

    # 10% of (19 + 1): the 2nd smallest; the 18th smallest: the 2nd largest.
    assert interval == PriceInterval(0.8, pytest.approx(-0.8), pytest.approx(0.8))


def test_the_range_never_holds_less_than_asked() -> None:
    actual = PREDICTED * np.exp(RATIOS)

    interval = log_ratio_interval(actual, PREDICTED, 0.85)  # 7.5% of 20 rows: 1.5, rounded out

    assert (interval.log_low, interval.log_high) == pytest.approx((-0.9, 0.9))


def test_the_range_is_relative_to_the_price() -> None:
    actual = PREDICTED * np.exp(RATIOS)

    assert log_ratio_interval(actual * 7, PREDICTED * 7, 0.6) == log_ratio_interval(
        actual, PREDICTED, 0.6
    )


@pytest.mark.parametrize("coverage", [0.0, 1.0, -0.2, 80])
def test_a_coverage_outside_0_and_1_is_refused(coverage: float) -> None:
    with pytest.raises(ValueError, match=rf"^coverage must be between 0 and 1, got {coverage}$"):
        log_ratio_interval(PREDICTED, PREDICTED, coverage)


def test_bounds_multiply_the_price_and_leave_no_price_without_one() -> None:
    interval = PriceInterval(0.8, math.log(0.75), math.log(1.5))

    bounds = interval.bounds(np.array([10_000.0, np.nan, 2_000.0]))

    np.testing.assert_allclose(bounds[LOW_COLUMN], [7_500.0, np.nan, 1_500.0])
    np.testing.assert_allclose(bounds[HIGH_COLUMN], [15_000.0, np.nan, 3_000.0])


def test_hits_count_the_bounds_as_inside_and_measure_the_width_relative_to_the_price() -> None:
    answer = pd.DataFrame(
        {PREDICTION_COLUMN: [100.0, 200.0, 400.0], LOW_COLUMN: [80.0, 150.0, 300.0]}
    ).assign(**{HIGH_COLUMN: [125.0, 250.0, 600.0]})

    hits = interval_hits(np.array([80.0, 251.0, 600.0]), answer)

    assert hits["interval_coverage"].tolist() == [1.0, 0.0, 1.0]
    assert hits["interval_width"].tolist() == pytest.approx([0.45, 0.5, 0.75])


def test_calibration_uses_prices_of_rows_the_model_did_not_fit(
    listings: pd.DataFrame, tiny_params: Params
) -> None:
    # Unbagged full-depth trees reproduce every training price: in-sample ratios are all 0.
    pipeline = build_pipeline(FOREST, 0).set_params(model__n_estimators=5, model__bootstrap=False)
    train = listings.drop_duplicates(list(FEATURE_NAMES))
    pipeline.fit(train[list(FEATURE_NAMES)], train[TARGET.name])
    in_sample = log_ratio_interval(train[TARGET.name], pipeline.predict(train), 0.8)
    assert (in_sample.log_low, in_sample.log_high) == pytest.approx((0.0, 0.0), abs=1e-9)

    interval = calibrate(pipeline, train, tiny_params)

    assert interval.coverage == tiny_params.interval_coverage == 0.8
    assert interval.log_low < -0.1 and interval.log_high > 0.1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_80_percent_range_covers_77_to_83_percent_of_test_rows(
    params: Params, variant: str
) -> None:
    """The default preset's features with one fixed gradient boosting; the range from its 5-fold
    out-of-fold prices, measured on a test split of the same world."""
    train, test = generate_splits(42, 6_000, 3_000, dirty=False, variant=variant)
    preset = params.preset("default")
    boosting = {"max_iter": 300, "min_samples_leaf": 40, "log_target": True}
    model = regressor(preset, "HistGradientBoostingRegressor", boosting, params.seed)
    pipeline = build_pipeline(preset, params.seed, model)
    with threadpool_limits(1):  # threads only wait for each other on a busy machine
        pipeline.fit(train[list(FEATURE_NAMES)], train[TARGET.name])
        interval = calibrate(pipeline, train, dataclasses.replace(params, cv_folds=5))
        prices = pipeline.predict(test[list(FEATURE_NAMES)])
    answer = pd.DataFrame({PREDICTION_COLUMN: prices, **interval.bounds(prices)})

    hits = interval_hits(test[TARGET.name], answer)

    coverage, width = hits["interval_coverage"].mean(), hits["interval_width"].median()
    logger.info("%s: coverage %.3f, width %.3f, %s", variant, coverage, width, interval)
    assert 0.77 <= coverage <= 0.83, (variant, coverage)
    assert interval.log_low < 0 < interval.log_high
