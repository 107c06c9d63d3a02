"""The fitted regressor as treelite models: its predictions without scikit-learn's per-call cost.

treelite walks all trees row after row: for a few rows it answers in well under a millisecond
where scikit-learn spends one Python call (or one OpenMP team) per tree; for larger batches
scikit-learn's own predict, one tree at a time over all rows, is faster and is used instead.
`compile_regressor` knows forests, extra trees, (histogram) gradient boosting and a Voting or
Stacking regressor over them (each member on the price or on its log); None for any other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

# Batches of at most this many rows go through treelite; measured on 2 busy cores, the crossing
# point with scikit-learn's predict is about 64 rows for both forests and boosting.
COMPILED_MAX_ROWS = 48

Predictor = Callable[[np.ndarray], np.ndarray]


def compile_regressor(regressor) -> Predictor | None:
    """A function of the regressor's input matrix (float64) giving its predictions, or None."""
    from sklearn.ensemble import StackingRegressor, VotingRegressor

    if isinstance(regressor, VotingRegressor):
        compiled = _voting(regressor)
    elif isinstance(regressor, StackingRegressor):
        compiled = _stacking(regressor)
    else:
        compiled = _trees(regressor)
    if compiled is None:
        return None

    def predict(matrix: np.ndarray) -> np.ndarray:
        if len(matrix) <= COMPILED_MAX_ROWS:
            return compiled(matrix)
        with threadpool_limits(1, user_api="openmp"):  # a team per tree stalls on busy cores
            return np.asarray(regressor.predict(matrix), dtype=np.float64).ravel()

    return predict


def _trees(estimator) -> Predictor | None:
    import treelite
    from sklearn import ensemble as sk

    families = (sk.ExtraTreesRegressor, sk.GradientBoostingRegressor, sk.RandomForestRegressor)
    # scikit-learn's decision trees compare features as float32; histogram boosting as float64.
    as_float32 = type(estimator) is not sk.HistGradientBoostingRegressor
    if as_float32 and type(estimator) not in families:
        return None
    model = treelite.sklearn.import_model(estimator)

    def predict(matrix: np.ndarray) -> np.ndarray:
        if as_float32:
            matrix = matrix.astype(np.float32).astype(np.float64)
        return treelite.gtil.predict(model, matrix, nthread=1).reshape(len(matrix))

    return predict


def _members(ensemble) -> list[Predictor] | None:
    members = [_member(estimator) for estimator in ensemble.estimators_]
    return [m for m in members if m is not None] if None not in members else None


def _member(estimator) -> Predictor | None:
    """Trees, or trees fitted on the log of the price (a TransformedTargetRegressor of them)."""
    from sklearn.compose import TransformedTargetRegressor

    if not isinstance(estimator, TransformedTargetRegressor):
        return _trees(estimator)
    trees = _trees(estimator.regressor_)
    if trees is None or estimator.func is not np.log or estimator.inverse_func is not np.exp:
        return None
    return lambda matrix: np.exp(trees(matrix))


def _voting(voting) -> Predictor | None:
    """The members' weighted average, as VotingRegressor.predict computes it."""
    members = _members(voting)
    if members is None:
        return None
    kept = [estimator != "drop" for _, estimator in voting.estimators]
    weights = None if voting.weights is None else np.compress(kept, voting.weights)
    return lambda matrix: np.average(
        np.column_stack([p(matrix) for p in members]), axis=1, weights=weights
    )


def _stacking(stacking) -> Predictor | None:
    """The final estimator on the members' predictions (and the features, with passthrough)."""
    members = _members(stacking)
    if members is None or set(stacking.stack_method_) != {"predict"}:
        return None
    final = stacking.final_estimator_

    def predict(matrix: np.ndarray) -> np.ndarray:
        stacked = [p(matrix) for p in members] + ([matrix] if stacking.passthrough else [])
        return np.asarray(final.predict(np.column_stack(stacked)), dtype=np.float64).ravel()

    return predict
