"""Train: fit the preset's pipeline, choosing family and hyperparameters by cross-validation.

Reads:  clean/train.parquet of an ingest run (`--ingest-run-id`; empty runs ingest first).
Writes: params, CV metrics (cv_mae, cv_rmse, cv_mape, cv_r2 and their std), cv_results.csv,
        the pyfunc model with its training profile, and a new version of the registered model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import click
import mlflow
import numpy as np
import pandas as pd
from category_encoders import TargetEncoder
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import (
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.model_selection import KFold, ParameterGrid, RandomizedSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from pyfunc.features import ENGINEERED_FEATURES, add_engineered_features
from pyfunc.model import log_model
from pyfunc.profile import build_profile
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_NAMES, TARGET
from pyfunc.settings import Settings
from steps.ingest import CLEAN_TRAIN, SOURCE_OPTION, run_ingest
from steps.params import Params, Preset, load_params
from steps.tracking import cli_errors, configure, load_frame, step_run

logger = logging.getLogger(__name__)

ESTIMATOR_CLASSES = {
    "GradientBoostingRegressor": GradientBoostingRegressor,
    "HistGradientBoostingRegressor": HistGradientBoostingRegressor,
    "RandomForestRegressor": RandomForestRegressor,
    "ExtraTreesRegressor": ExtraTreesRegressor,
}
SCORING = {
    "mae": "neg_mean_absolute_error",
    "rmse": "neg_root_mean_squared_error",
    "mape": "neg_mean_absolute_percentage_error",
    "r2": "r2",
}


@dataclass(frozen=True)
class TrainResult:
    pipeline: Pipeline
    best_params: dict[str, object]
    cv_metrics: dict[str, float]
    cv_results: pd.DataFrame


def build_pipeline(preset: Preset, seed: int) -> Pipeline:
    """Target-encode type and sector, pass every numeric feature through, then regress.

    The estimator is a placeholder that the search replaces with each candidate.
    """
    encode = ColumnTransformer(
        [("target_encoding", TargetEncoder(cols=list(CATEGORICAL_NAMES)), list(CATEGORICAL_NAMES))],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    first = preset.candidates[0]
    model = ESTIMATOR_CLASSES[first.estimator](random_state=seed)
    if preset.monotonic:
        model.set_params(monotonic_cst=monotonic_constraints(preset))
    if preset.log_target:
        model = TransformedTargetRegressor(
            regressor=model, func=np.log, inverse_func=np.exp, check_inverse=False
        )
    steps = [("encode", encode), ("model", model)]
    if preset.engineered_features:
        steps.insert(0, ("features", FunctionTransformer(add_engineered_features)))
    return Pipeline(steps)


def model_features(preset: Preset) -> list[str]:
    """The columns the regressor sees, in order: encoded categories, numeric, engineered."""
    engineered = ENGINEERED_FEATURES if preset.engineered_features else ()
    return [*CATEGORICAL_NAMES, *NUMERIC_NAMES, *engineered]


def monotonic_constraints(preset: Preset) -> list[int] | None:
    if not preset.monotonic:
        return None
    return [preset.monotonic.get(name, 0) for name in model_features(preset)]


def search_space(preset: Preset, seed: int) -> list[dict[str, list]]:
    """One grid per candidate family, in the pipeline's parameter names."""
    prefix = "model__regressor" if preset.log_target else "model"
    constraints = monotonic_constraints(preset)
    fixed = {f"{prefix}__monotonic_cst": [constraints]} if constraints else {}
    return [
        {
            prefix: [ESTIMATOR_CLASSES[c.estimator](random_state=seed)],
            **fixed,
            **{f"{prefix}__{name}": values for name, values in c.params.items()},
        }
        for c in preset.candidates
    ]


def fit(train: pd.DataFrame, preset: Preset, params: Params) -> TrainResult:
    """Random search (bounded by params.yaml) over the preset's candidates, K-fold CV on MAE."""
    space = search_space(preset, params.seed)
    search = RandomizedSearchCV(
        build_pipeline(preset, params.seed),
        space,
        n_iter=min(params.search_iterations, len(ParameterGrid(space))),
        scoring=SCORING,
        refit="mae",
        cv=KFold(params.cv_folds, shuffle=True, random_state=params.seed),
        random_state=params.seed,
        n_jobs=-1,
        error_score="raise",
    )
    search.fit(train[list(FEATURE_NAMES)], train[TARGET.name])
    results = _cv_table(search.cv_results_)
    return TrainResult(
        search.best_estimator_,
        _readable(search.best_params_),
        _cv_metrics(results.iloc[0]),
        results,
    )


def _cv_table(cv_results: dict) -> pd.DataFrame:
    table = pd.DataFrame(cv_results)
    keep = ["params"] + [f"{kind}_test_{m}" for m in SCORING for kind in ("mean", "std")]
    table = table[keep].sort_values("mean_test_mae", ascending=False)
    for metric in ("mae", "rmse", "mape"):
        table[f"mean_test_{metric}"] = -table[f"mean_test_{metric}"]
    table["params"] = table["params"].map(lambda p: str(_readable(p)))
    return table.reset_index(drop=True)


def _cv_metrics(best: pd.Series) -> dict[str, float]:
    return {f"cv_{m}": float(best[f"mean_test_{m}"]) for m in SCORING} | {
        f"cv_{m}_std": float(best[f"std_test_{m}"]) for m in SCORING
    }


def _readable(best_params: dict) -> dict[str, object]:
    """`model__regressor__max_iter` -> `max_iter`; the estimator object -> its class name."""
    readable = {}
    for key, value in best_params.items():
        name = key.rsplit("__", 1)[-1] if "__" in key else "estimator"
        readable["estimator" if name in ("model", "regressor") else name] = (
            type(value).__name__ if hasattr(value, "fit") else value
        )
    return readable


def run_train(
    ingest_run_id: str, preset_name: str, source: str, params: Params, settings: Settings
) -> tuple[str, str]:
    """Train in a step run; returns (run id, registered model version)."""
    with step_run("train") as run:
        if not ingest_run_id:
            ingest_run_id = run_ingest(source, "train", "test", params)
        preset = params.preset(preset_name)
        train = load_frame(ingest_run_id, CLEAN_TRAIN)
        mlflow.set_tags({"ingest_run_id": ingest_run_id, "preset": preset.name})
        mlflow.log_params(
            {"seed": params.seed, "cv_folds": params.cv_folds, "train_rows": len(train)}
        )
        result = fit(train, preset, params)
        mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
        mlflow.log_metrics(result.cv_metrics)
        mlflow.log_table(result.cv_results, "cv_results.json")
        logger.info("best %s: CV MAE %.0f UF", result.best_params, result.cv_metrics["cv_mae"])
        info = log_model(result.pipeline, build_profile(train), train.head(3), settings.model_name)
        version = str(info.registered_model_version)
        mlflow.set_tag("model_version", version)
        return run.info.run_id, version


@click.command()
@click.option(
    "--ingest-run-id",
    default="",
    help="Ingest run whose clean data to use; empty to ingest --source first.",
)
@click.option("--preset", default="", help="Preset of params.yaml (default: its `preset`).")
@SOURCE_OPTION
@cli_errors
def main(ingest_run_id: str, preset: str, source: str) -> None:
    """Fit the model, log it with its CV scores and register a new version."""
    settings = Settings.from_env()
    configure(settings)
    run_id, version = run_train(ingest_run_id, preset, source, load_params(), settings)
    click.echo(f"train run: {run_id}\nregistered: {settings.model_name} version {version}")


if __name__ == "__main__":
    main()
