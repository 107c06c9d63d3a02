"""Model selection: every configuration scored by the same K-fold CV on the training data.

Each configuration gets one progress line (CV MAE, seconds). The average of the best
configuration of each family (a VotingRegressor) competes as one more: its out-of-fold
predictions are the average of its members' (a VotingRegressor fitted on a fold averages the
members fitted on that fold), so it is scored without fitting anything again.
"""

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import VotingRegressor
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    r2_score,
    root_mean_squared_error,
)
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

METRICS = {
    "mae": mean_absolute_error,
    "rmse": root_mean_squared_error,
    "mape": mean_absolute_percentage_error,
    "r2": r2_score,
}
ENSEMBLE = "VotingRegressor"


@dataclass(frozen=True)
class Scored:
    """One configuration: its unfitted pipeline, out-of-fold predictions and CV scores."""

    name: str
    family: str
    config: dict[str, object]
    pipeline: Pipeline
    predictions: np.ndarray
    metrics: dict[str, float] = field(repr=False)
    seconds: float

    @property
    def mae(self) -> float:
        return self.metrics["mean_test_mae"]


def fold_metrics(y: np.ndarray, predictions: np.ndarray, cv: KFold) -> dict[str, float]:
    """Mean and standard deviation over the folds of each metric, as `cross_validate` gives."""
    folds = [test for _, test in cv.split(y)]
    scores = {m: [f(y[i], predictions[i]) for i in folds] for m, f in METRICS.items()}
    return {f"mean_test_{m}": float(np.mean(s)) for m, s in scores.items()} | {
        f"std_test_{m}": float(np.std(s)) for m, s in scores.items()
    }


def score(
    name: str, config: dict, pipeline: Pipeline, x: pd.DataFrame, y: np.ndarray, cv: KFold
) -> Scored:
    """The configuration's out-of-fold predictions (folds in parallel) and scores, logged."""
    start = time.perf_counter()
    predictions = cross_val_predict(pipeline, x, y, cv=cv, n_jobs=-1)
    model = pipeline.named_steps["model"]
    family = type(getattr(model, "regressor", model)).__name__  # unwrapped from a log target
    scored = Scored(
        name, family, config, pipeline, predictions, fold_metrics(y, predictions, cv),
        time.perf_counter() - start,
    )  # fmt: skip
    _progress(scored)
    return scored


def average(members: list[Scored], y: np.ndarray, cv: KFold) -> Scored:
    """The members' average as one candidate, scored from their out-of-fold predictions."""
    start = time.perf_counter()
    voting = VotingRegressor([(m.name, m.pipeline.named_steps["model"]) for m in members])
    pipeline = clone(members[0].pipeline).set_params(model=voting)
    predictions = np.mean([m.predictions for m in members], axis=0)
    config: dict[str, object] = {"members": ", ".join(m.name for m in members)}
    seconds = time.perf_counter() - start
    scored = Scored(
        ENSEMBLE, ENSEMBLE, config, pipeline, predictions, fold_metrics(y, predictions, cv), seconds
    )
    _progress(scored)
    return scored


def best_per_family(scored: list[Scored]) -> list[Scored]:
    """The lowest CV MAE of each family, in the order the families were first scored."""
    best: dict[str, Scored] = {}
    for one in scored:
        if one.family not in best or one.mae < best[one.family].mae:
            best[one.family] = one
    return list(best.values())


def select(
    candidates: list[tuple[str, dict, Pipeline]],
    x: pd.DataFrame,
    y: np.ndarray,
    cv: KFold,
    ensemble: bool,
) -> list[Scored]:
    """Every candidate scored, plus the average of the families' best; the best first."""
    scored = [score(name, config, pipeline, x, y, cv) for name, config, pipeline in candidates]
    families = best_per_family(scored)
    if ensemble and len(families) > 1:
        scored.append(average(families, y, cv))
    return sorted(scored, key=lambda s: s.mae)


def _progress(scored: Scored) -> None:
    logger.info(
        "%s %s: CV MAE %.0f UF (%.1f s)", scored.name, scored.config, scored.mae, scored.seconds
    )
