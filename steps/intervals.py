"""Price ranges: calibrated on predictions of rows the model did not fit, and measured on test.

Train calibrates on the chosen candidate's out-of-fold predictions from the search (each
training row priced by a model fitted on the other folds). The range is the (1-c)/2 and (1+c)/2
quantiles of log(actual / predicted) over those rows, applied to the served price as factors
(prices are heteroscedastic: the error grows with the price). The served model applies it
(`pyfunc.model.PriceInterval`); `train` logs it as params and stores it with the version.
"""

import math

import mlflow
import numpy as np
import pandas as pd

from pyfunc.model import PriceInterval
from pyfunc.schema import HIGH_COLUMN, LOW_COLUMN, PREDICTION_COLUMN
from steps.params import Params


def log_ratio_interval(actual: np.ndarray, predicted: np.ndarray, coverage: float) -> PriceInterval:
    """The order statistics of log(actual / predicted) that split-conformal prediction takes
    for a new row: the floor(t (n + 1))-th and ceil((1 - t) (n + 1))-th smallest of n ratios,
    t = (1 - coverage) / 2 (clipped to the smallest and largest)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, got {coverage}")
    # A price at or below zero has no ratio; one UF stands for it (no priced listing is there).
    predicted = np.maximum(np.asarray(predicted, float), 1.0)
    ratios = np.sort(np.log(np.asarray(actual, float) / predicted))
    tail, n = (1 - coverage) / 2, len(ratios)
    low = math.floor(round(tail * (n + 1), 9)) - 1
    high = math.ceil(round((1 - tail) * (n + 1), 9)) - 1
    return PriceInterval(coverage, float(ratios[max(low, 0)]), float(ratios[min(high, n - 1)]))


def run_calibration(actual: np.ndarray, out_of_fold: np.ndarray, params: Params) -> PriceInterval:
    """The range from out-of-fold predictions, logged as params of the active run
    (interval_coverage, interval_log_low, interval_log_high)."""
    interval = log_ratio_interval(actual, out_of_fold, params.interval_coverage)
    low, high = round(interval.log_low, 6), round(interval.log_high, 6)
    mlflow.log_params(
        {"interval_coverage": interval.coverage, "interval_log_low": low, "interval_log_high": high}
    )
    return interval


def interval_hits(actual: np.ndarray, answer: pd.DataFrame) -> pd.DataFrame:
    """Per row: 1.0 if the actual price is inside its range (else 0.0), and the range's width
    relative to the price."""
    actual = np.asarray(actual, float)
    low, high = answer[LOW_COLUMN].to_numpy(), answer[HIGH_COLUMN].to_numpy()
    return pd.DataFrame(
        {
            "interval_coverage": ((low <= actual) & (actual <= high)).astype(float),
            "interval_width": (high - low) / answer[PREDICTION_COLUMN].to_numpy(),
        }
    )
