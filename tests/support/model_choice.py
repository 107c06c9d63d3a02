"""Test MAE of every candidate a preset's selection scores, and of two baselines, on one
generated world: what `make model-table` prints and tests/integration/test_model_choice.py checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from joblib import parallel_config
from sklearn.base import clone
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline

from pyfunc.schema import FEATURE_NAMES, TARGET
from steps.ingest import ingest
from steps.params import Params
from steps.selection import ENSEMBLE, select
from steps.sources import open_source
from steps.train import build_pipeline, candidates

UNTUNED_FOREST = "RandomForestRegressor(n_estimators=300)"
NOTEBOOK = "notebook preset"


@dataclass(frozen=True)
class Comparison:
    """One world: the candidate the selection chose, and each candidate's CV and test MAE."""

    variant: str
    chosen: str
    cv_mae: dict[str, float]
    test_mae: dict[str, float]

    def best_single(self) -> str:
        """The single model (no average, no baseline) with the lowest test MAE."""
        singles = {n: m for n, m in self.test_mae.items() if n in self.cv_mae and n != ENSEMBLE}
        return min(singles, key=singles.__getitem__)


def clean_splits(
    variant: str, params: Params, train_rows: int, test_rows: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The generated world's train and test rows, cleaned as `ingest` cleans them."""
    spec = f"synthetic:variant={variant},train_rows={train_rows},test_rows={test_rows}"
    result = ingest(open_source(spec), params)
    return result.train, result.test


def holdout_mae(pipeline: Pipeline, train: pd.DataFrame, test: pd.DataFrame) -> float:
    """`pipeline` fitted on all of `train`, scored on `test`."""
    with parallel_config(n_jobs=-1):
        fitted = clone(pipeline).fit(train[list(FEATURE_NAMES)], train[TARGET.name])
    return float(mean_absolute_error(test[TARGET.name], fitted.predict(test[list(FEATURE_NAMES)])))


def compare(
    variant: str,
    params: Params,
    train_rows: int = 16_212,
    test_rows: int = 6_949,
    baselines: bool = True,
) -> Comparison:
    """The default preset's selection on `variant`, every candidate refitted and tested; with
    `baselines`, also the untuned 300-tree forest (same features) and the notebook preset."""
    train, test = clean_splits(variant, params, train_rows, test_rows)
    preset = params.preset(None)
    cv = KFold(params.cv_folds, shuffle=True, random_state=params.seed)
    x, y = train[list(FEATURE_NAMES)], train[TARGET.name].to_numpy()
    scored = select(candidates(preset, params), x, y, cv, preset.ensemble)
    maes = {s.name: holdout_mae(s.pipeline, train, test) for s in scored}
    if baselines:
        forest = RandomForestRegressor(n_estimators=300, random_state=params.seed)
        maes[UNTUNED_FOREST] = holdout_mae(build_pipeline(preset, params.seed, forest), train, test)
        notebook = params.preset("notebook")
        ((_, _, pipeline),) = candidates(notebook, params)
        maes[NOTEBOOK] = holdout_mae(pipeline, train, test)
    return Comparison(variant, scored[0].name, {s.name: s.mae for s in scored}, maes)
