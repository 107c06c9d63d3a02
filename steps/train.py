"""Train: fit the preset's pipeline, choosing family and hyperparameters by cross-validation.

Reads:  clean/train.parquet of an ingest run (`--ingest-run-id`; empty runs ingest first).
Writes: params, CV metrics (cv_mae, cv_rmse, cv_mape, cv_r2 and their std; the chosen model's
        estimated size_nodes and size_mb), cv_results.json (every candidate, its size too),
        the pyfunc model with its training profile and price range (steps/intervals.py), and
        a new version of the registered model.
"""

import logging
from dataclasses import dataclass

import click
import mlflow
import numpy as np
import pandas as pd
from category_encoders import TargetEncoder
from joblib import parallel_config
from sklearn import ensemble
from sklearn.base import clone
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.model_selection import KFold, ParameterGrid, ParameterSampler
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from config.settings import Settings
from pyfunc.features import ENGINEERED_FEATURES, add_engineered_features
from pyfunc.model import log_model
from pyfunc.profile import build_profile
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_NAMES, TARGET
from steps.ingest import CLEAN_TRAIN, SOURCE_OPTION, run_ingest
from steps.intervals import run_calibration
from steps.params import Params, Preset, load_params
from steps.selection import METRICS, Scored, choose, select
from steps.tracking import cli_errors, configure, load_frame, step_run

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The chosen pipeline fitted on all training rows, its CV scores and how they were made."""

    pipeline: Pipeline
    best_params: dict[str, object]
    cv_metrics: dict[str, float]
    cv_results: pd.DataFrame
    cv: KFold  # the folds every candidate was scored on
    cv_predictions: np.ndarray  # the chosen pipeline's out-of-fold predictions, row by row


def build_pipeline(preset: Preset, seed: int, model: object = None) -> Pipeline:
    """Target-encode type and sector, pass every numeric feature through, then regress.

    Without `model`, the regressor is the preset's first candidate with default settings.
    """
    encode = ColumnTransformer(
        [("target_encoding", TargetEncoder(cols=list(CATEGORICAL_NAMES)), list(CATEGORICAL_NAMES))],
        remainder="passthrough",
        verbose_feature_names_out=False,
    )
    if model is None:
        model = regressor(preset, preset.candidates[0].estimator, {}, seed)
    steps = [("encode", encode), ("model", model)]
    if preset.engineered_features:
        steps.insert(0, ("features", FunctionTransformer(add_engineered_features)))
    return Pipeline(steps)


def regressor(preset: Preset, estimator: str, config: dict[str, object], seed: int) -> object:
    """One configuration of a candidate (an estimator of sklearn.ensemble named in
    steps.params.ESTIMATORS): `log_target` in `config` overrides the preset's."""
    settings = dict(config)
    log_target = settings.pop("log_target", preset.log_target)
    model = getattr(ensemble, estimator)(random_state=seed, **settings)
    if preset.monotonic:
        model.set_params(monotonic_cst=monotonic_constraints(preset))
    if log_target:
        model = TransformedTargetRegressor(
            regressor=model, func=np.log, inverse_func=np.exp, check_inverse=False
        )
    return model


def monotonic_constraints(preset: Preset) -> list[int]:
    """The preset's direction (0: none) of each column the regressor sees, in order: encoded
    categories, numeric, engineered."""
    engineered = ENGINEERED_FEATURES if preset.engineered_features else ()
    columns = (*CATEGORICAL_NAMES, *NUMERIC_NAMES, *engineered)
    return [preset.monotonic.get(name, 0) for name in columns]


def candidates(preset: Preset, params: Params) -> list[tuple[str, dict, Pipeline]]:
    """Per candidate, at most `search_iterations` configurations sampled from its grid."""
    configured = []
    for candidate in preset.candidates:
        iterations = min(params.search_iterations, len(ParameterGrid(candidate.params)))
        sampled = ParameterSampler(candidate.params, iterations, random_state=params.seed)
        for number, config in enumerate(sampled if candidate.params else [{}], start=1):
            model = regressor(preset, candidate.estimator, config, params.seed)
            name = f"{candidate.estimator}_{number}"
            configured.append((name, config, build_pipeline(preset, params.seed, model)))
    return configured


def fit(train: pd.DataFrame, preset: Preset, params: Params) -> TrainResult:
    """Choose by K-fold CV MAE among the preset's candidates, weighing size as `params.selection`
    says (by default not at all); refit the chosen one on all rows."""
    x, y = train[list(FEATURE_NAMES)], train[TARGET.name].to_numpy()
    cv = KFold(params.cv_folds, shuffle=True, random_state=params.seed)
    scored = select(candidates(preset, params), x, y, cv, preset.ensemble)
    rule = params.selection
    best = choose(scored, rule.max_model_mb, rule.size_weight)
    with parallel_config(n_jobs=-1):  # the forests' trees and the ensemble's members
        pipeline = clone(best.pipeline).fit(x, y)
    best_params = {"estimator": best.family, **best.config}
    logger.info(
        "chosen: %s %s, CV MAE %.0f UF, %d nodes (%.1f MB)",
        best.name, best.config, best.mae, best.nodes, best.size_mb,
    )  # fmt: skip
    return TrainResult(
        pipeline, best_params, _cv_metrics(best), _cv_table(scored, best), cv, best.predictions
    )


def _cv_table(scored: list[Scored], chosen: Scored) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "candidate": s.name,
            "params": str(s.config),
            **s.metrics,
            "size_nodes": s.nodes,
            "size_mb": s.size_mb,
            "chosen": s is chosen,
            "seconds": s.seconds,
        }
        for s in scored
    )


def _cv_metrics(best: Scored) -> dict[str, float]:
    return (
        {f"cv_{m}": best.metrics[f"mean_test_{m}"] for m in METRICS}
        | {f"cv_{m}_std": best.metrics[f"std_test_{m}"] for m in METRICS}
        | {"size_nodes": best.nodes, "size_mb": best.size_mb}
    )


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
        interval = run_calibration(train[TARGET.name].to_numpy(), result.cv_predictions, params)
        info = log_model(
            result.pipeline,
            build_profile(train),
            train.head(3),
            settings.candidate_model_name,
            interval,
        )
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
    settings = configure()
    run_id, version = run_train(ingest_run_id, preset, source, load_params(), settings)
    click.echo(
        f"train run: {run_id}\nregistered: {settings.candidate_model_name} version {version}"
    )


if __name__ == "__main__":
    main()
