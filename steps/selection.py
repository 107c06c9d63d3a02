"""Model selection: every configuration scored by the same K-fold CV on the training data.

Each configuration gets one progress line (CV MAE, size, seconds). The average of the best
configuration of each family (a VotingRegressor) competes as one more: its out-of-fold
predictions are the average of its members' (a VotingRegressor fitted on a fold averages the
members fitted on that fold), so it is scored without fitting anything again.

Size: the served model holds its trees compiled by treelite (pyfunc/compiled.py), its memory
dominated by their node count. That count is taken on the fold fits the CV makes anyway
(nothing is refitted): the mean over the folds, scaled to all training rows for trees that grow
with the rows (no `max_depth` nor `max_leaf_nodes`: full-depth forests); a VotingRegressor
holds its members'.
`choose` weighs it: `max_model_mb` excludes larger candidates, `size_weight` penalises size.
"""

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import VotingRegressor
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    r2_score,
    root_mean_squared_error,
)
from sklearn.model_selection import KFold, cross_validate
from sklearn.pipeline import Pipeline

from pyfunc.compiled import compile_regressor
from steps.tracking import StepError

logger = logging.getLogger(__name__)

METRICS = {
    "mae": mean_absolute_error,
    "rmse": root_mean_squared_error,
    "mape": mean_absolute_percentage_error,
    "r2": r2_score,
}
ENSEMBLE = "VotingRegressor"
# Calibrated on real fits: every candidate of the default preset on client-sized `realistic`
# data (16,212 rows, 4 folds), each refitted on all rows and compiled as the model server loads
# it (model_compiled_mb: treelite's serialization): 91.0 bytes per node for the forests (38.5 MB
# for a 443,333-node random forest), 85.1 for histogram boosting (2.0 MB).
BYTES_PER_NODE = 91
# A full-depth forest refitted on all rows has 1.29 to 1.30 times the nodes of its fits on 3/4
# of them (the fold fits), as rows ** 0.9 gives: (4/3) ** 0.9 = 1.296. Capped trees (boosting)
# are not scaled: theirs follow early stopping (the refit had 1.14 to 1.50 times the nodes of
# the fold fits there: up to 0.7 MB more, on models of 1.6 to 2.5 MB).
ROWS_EXPONENT = 0.9


@dataclass(frozen=True)
class Scored:
    """One configuration: its unfitted pipeline, out-of-fold predictions, CV scores and the
    estimated node count of its trees once refitted on all training rows."""

    name: str
    family: str
    config: dict[str, object]
    pipeline: Pipeline
    predictions: np.ndarray
    metrics: dict[str, float] = field(repr=False)
    seconds: float
    nodes: int

    @property
    def mae(self) -> float:
        return self.metrics["mean_test_mae"]

    @property
    def size_mb(self) -> float:
        """The estimated size of its compiled trees (MB)."""
        return self.nodes * BYTES_PER_NODE / 2**20


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
    """The configuration's out-of-fold predictions (folds in parallel), scores and size, logged."""
    start = time.perf_counter()
    folds = cross_validate(
        pipeline, x, y, cv=cv, n_jobs=-1, scoring=_nodes, return_estimator=True,
        return_indices=True,
    )  # fmt: skip
    predictions = np.empty(len(y))
    for fitted, test in zip(folds["estimator"], folds["indices"]["test"], strict=True):
        predictions[test] = fitted.predict(x.iloc[test])
    model = pipeline.named_steps["model"]
    regressor = getattr(model, "regressor", model)  # unwrapped from a log target
    rows = len(y) / np.mean([len(train) for train in folds["indices"]["train"]])
    growth = rows**ROWS_EXPONENT if _grows_with_rows(regressor) else 1.0
    nodes = np.mean(folds["test_score"]) * growth
    scored = Scored(
        name, type(regressor).__name__, config, pipeline, predictions,
        fold_metrics(y, predictions, cv), time.perf_counter() - start, round(nodes),
    )  # fmt: skip
    _progress(scored)
    return scored


def tree_nodes(model: object) -> int:
    """The node count of a fitted regressor's trees, as the served model compiles them."""
    if isinstance(model, TransformedTargetRegressor):
        model = model.regressor_
    compiled = compile_regressor(model)
    if compiled is None:
        raise StepError(f"cannot measure the size of {type(model).__name__}: not made of trees")
    return sum(
        int(trees.model.get_tree_accessor(tree).get_field("num_nodes")[0])
        for trees in compiled.members
        for tree in range(trees.model.num_tree)
    )


def _nodes(pipeline: Pipeline, x: pd.DataFrame, y: np.ndarray) -> int:
    """A scorer (of cross_validate, in the fold's process): the fold fit's node count."""
    return tree_nodes(pipeline.named_steps["model"])


def _grows_with_rows(regressor: object) -> bool:
    """Whether its trees grow with the rows (leaves bounded by `min_samples_leaf` only)."""
    settings = regressor.get_params()  # type: ignore[attr-defined]
    return settings.get("max_depth") is None and settings.get("max_leaf_nodes") is None


def average(members: list[Scored], y: np.ndarray, cv: KFold) -> Scored:
    """The members' average as one candidate, scored from their out-of-fold predictions."""
    start = time.perf_counter()
    voting = VotingRegressor([(m.name, m.pipeline.named_steps["model"]) for m in members])
    pipeline = clone(members[0].pipeline).set_params(model=voting)
    predictions = np.mean([m.predictions for m in members], axis=0)
    config: dict[str, object] = {"members": ", ".join(m.name for m in members)}
    seconds = time.perf_counter() - start
    nodes = sum(m.nodes for m in members)
    scored = Scored(
        ENSEMBLE, ENSEMBLE, config, pipeline, predictions, fold_metrics(y, predictions, cv),
        seconds, nodes,
    )  # fmt: skip
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


def choose(scored: list[Scored], max_mb: float | None = None, weight: float = 0.0) -> Scored:
    """The candidate of lowest CV MAE x (1 + `weight` x size in MB) among those of at most
    `max_mb` (None: any size); with the defaults, the lowest CV MAE. Each candidate left out
    is logged with its size."""
    allowed = [s for s in scored if max_mb is None or s.size_mb <= max_mb]
    for left_out in (s for s in scored if max_mb is not None and s.size_mb > max_mb):
        logger.info(
            "%s not chosen: %.1f MB over selection.max_model_mb (%g MB)",
            left_out.name, left_out.size_mb, max_mb,
        )  # fmt: skip
    if not allowed:
        smallest = min(scored, key=lambda s: s.nodes)
        raise StepError(
            f"no candidate fits selection.max_model_mb ({max_mb:g} MB): the smallest, "
            f"{smallest.name}, is {smallest.size_mb:.1f} MB ({smallest.nodes} nodes); raise the "
            "limit or search smaller forests (n_estimators, min_samples_leaf, max_depth)"
        )
    return min(allowed, key=lambda s: s.mae * (1 + weight * s.size_mb))


def _progress(scored: Scored) -> None:
    logger.info(
        "%s %s: CV MAE %.0f UF, %d nodes (%.1f MB) (%.1f s)",
        scored.name, scored.config, scored.mae, scored.nodes, scored.size_mb, scored.seconds,
    )  # fmt: skip
