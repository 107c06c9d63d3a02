"""Price ranges: calibrated on predictions of rows the model did not fit, and measured on test.

`calibrate` refits the chosen (unfitted) pipeline on the training folds of the same K-fold
split the search used and predicts each held-out fold (`cross_val_predict`): every training
row gets a price from a model that never saw it. The range is the (1-c)/2 and (1+c)/2
quantiles of log(actual / predicted) over those rows, applied to the served price as factors
(prices are heteroscedastic: the error grows with the price). The served model applies it
(`pyfunc.model.PriceInterval`); `train` logs it as params and stores it with the version.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import KFold, cross_val_predict

from pyfunc.model import PriceInterval
from pyfunc.schema import FEATURE_NAMES, HIGH_COLUMN, LOW_COLUMN, PREDICTION_COLUMN, TARGET
from steps.params import Params


def log_ratio_interval(actual: np.ndarray, predicted: np.ndarray, coverage: float) -> PriceInterval:
    """The quantiles of log(actual / predicted) that leave (1 - coverage) / 2 of the rows on
    each side (the outer order statistics, so the range never holds less than asked)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, got {coverage}")
    # A price at or below zero has no ratio; one UF stands for it (no priced listing is there).
    ratios = np.log(np.asarray(actual, float) / np.maximum(np.asarray(predicted, float), 1.0))
    tail = (1 - coverage) / 2
    return PriceInterval(
        coverage,
        float(np.quantile(ratios, tail, method="lower")),
        float(np.quantile(ratios, 1 - tail, method="higher")),
    )


def calibrate(pipeline, train: pd.DataFrame, params: Params) -> PriceInterval:
    """The range of `params.interval_coverage`, from out-of-fold prices of a clone of the
    fitted `pipeline` (same folds and seed as the search)."""
    folds = KFold(params.cv_folds, shuffle=True, random_state=params.seed)
    actual = train[TARGET.name].to_numpy()
    predicted = cross_val_predict(
        clone(pipeline), train[list(FEATURE_NAMES)], actual, cv=folds, n_jobs=-1
    )
    return log_ratio_interval(actual, predicted, params.interval_coverage)


def run_calibration(pipeline, train: pd.DataFrame, params: Params) -> PriceInterval:
    """`calibrate`, logged as params of the active run (interval_coverage, interval_log_low,
    interval_log_high)."""
    interval = calibrate(pipeline, train, params)
    mlflow.log_params(
        {
            "interval_coverage": interval.coverage,
            "interval_log_low": round(interval.log_low, 6),
            "interval_log_high": round(interval.log_high, 6),
        }
    )
    return interval


def interval_quality(actual: np.ndarray, answer: pd.DataFrame) -> dict[str, float]:
    """Share of actual prices inside their range, and the median width relative to the price."""
    actual = np.asarray(actual, float)
    inside = (answer[LOW_COLUMN] <= actual) & (actual <= answer[HIGH_COLUMN])
    width = (answer[HIGH_COLUMN] - answer[LOW_COLUMN]) / answer[PREDICTION_COLUMN]
    return {"coverage": float(inside.mean()), "width": float(width.median())}
