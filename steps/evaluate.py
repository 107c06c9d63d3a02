"""Evaluate: score a registered model version on the test split and compare with the champion.

Reads:  the model version (`--model-version`, default the newest) and clean/test.parquet of the
        ingest run its training used (or `--ingest-run-id`).
Writes: metrics test_mae, test_rmse, test_mape, test_r2 and test_mae_<sector>; plots
        (predicted vs actual, residuals by sector, permutation importance); and tags on the
        model version: the same metrics, the champion's MAE on the same rows and a verdict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import click
import mlflow
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.inspection import permutation_importance
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    r2_score,
    root_mean_squared_error,
)

from pyfunc import registry
from pyfunc.schema import FEATURE_NAMES, PREDICTION_COLUMN, TARGET
from pyfunc.settings import Settings
from steps import plots
from steps.ingest import CLEAN_TEST
from steps.params import Params, load_params
from steps.tracking import StepError, cli_errors, configure, load_frame, step_run

logger = logging.getLogger(__name__)

PASSING_VERDICTS = ("better", "within_tolerance", "no_champion")


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    by_sector: pd.DataFrame
    predictions: np.ndarray


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, MAPE and R² over rows with a positive price; the others are counted."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    scored = y_true > 0
    if not scored.any():
        raise StepError("no test row has a positive price: nothing to evaluate")
    y_true, y_pred = y_true[scored], y_pred[scored]
    return {
        "test_rmse": float(root_mean_squared_error(y_true, y_pred)),
        "test_mae": float(mean_absolute_error(y_true, y_pred)),
        "test_mape": float(mean_absolute_percentage_error(y_true, y_pred)),
        "test_r2": float(r2_score(y_true, y_pred)),
        "test_rows": int(scored.sum()),
        "test_rows_excluded_nonpositive_price": int((~scored).sum()),
    }


def predict_prices(model, frame: pd.DataFrame) -> np.ndarray:
    return model.predict(frame[list(FEATURE_NAMES)])[PREDICTION_COLUMN].to_numpy()


def evaluate(model, test: pd.DataFrame) -> Evaluation:
    predictions = predict_prices(model, test)
    errors = pd.DataFrame(
        {"sector": test["sector"], "abs_error": np.abs(test[TARGET.name].to_numpy() - predictions)}
    )
    by_sector = errors.groupby("sector")["abs_error"].agg(mae="mean", rows="size").reset_index()
    return Evaluation(regression_metrics(test[TARGET.name], predictions), by_sector, predictions)


def verdict(mae: float, champion_mae: float | None, tolerance: float) -> str:
    """'no_champion', 'better', 'within_tolerance' (at most `tolerance` worse) or 'worse'."""
    if champion_mae is None:
        return "no_champion"
    if mae <= champion_mae:
        return "better"
    return "within_tolerance" if mae <= champion_mae * (1 + tolerance) else "worse"


class _PriceModel(RegressorMixin, BaseEstimator):
    """The pyfunc model seen as an estimator, for sklearn's permutation importance."""

    def __init__(self, model):
        self.model = model

    def fit(self, *_):
        return self

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return predict_prices(self.model, frame)


def importance(model, test: pd.DataFrame, params: Params) -> pd.Series:
    """Mean increase of MAE when each input feature is shuffled (on a sample of the test set)."""
    sample = test.sample(min(len(test), params.importance_rows), random_state=params.seed)
    result = permutation_importance(
        _PriceModel(model),
        sample[list(FEATURE_NAMES)],
        sample[TARGET.name],
        scoring="neg_mean_absolute_error",
        n_repeats=3,
        random_state=params.seed,
    )
    return pd.Series(result.importances_mean, index=list(FEATURE_NAMES)).sort_values()


def champion_mae(
    settings: Settings, version: str, test: pd.DataFrame, against: str | None = None
) -> tuple[str | None, float | None]:
    """The MAE on the same test rows of version `against` (default: the current champion);
    (None, None) when there is no other version to compare with."""
    against = against or registry.alias_version(settings.model_name, settings.model_alias)
    if against in (None, str(version)):
        return None, None
    try:
        model = mlflow.pyfunc.load_model(registry.model_uri(settings.model_name, against))
        return against, evaluate(model, test).metrics["test_mae"]
    except Exception as error:  # a broken champion must not block its replacement
        logger.warning(
            "champion version %s cannot be scored (%s); treating it as absent", against, error
        )
        return None, None


def run_evaluate(
    version: str, ingest_run_id: str, params: Params, settings: Settings, against: str | None = None
) -> str:
    """Evaluate in a step run, tag the model version; returns the verdict, compared with
    version `against` (default: the current champion)."""
    version = version or registry.latest_version(settings.model_name)
    with step_run("evaluate") as run:
        uri = registry.model_uri(settings.model_name, version)
        run_id = registry.lookup(uri).run_id or ""
        ingest_run_id = ingest_run_id or mlflow.get_run(run_id).data.tags.get("ingest_run_id", "")
        if not ingest_run_id:
            raise StepError(f"version {version} does not name its ingest run; pass --ingest-run-id")
        test = load_frame(ingest_run_id, CLEAN_TEST)
        model = mlflow.pyfunc.load_model(uri)
        result = evaluate(model, test)
        champion_version, champion = champion_mae(settings, version, test, against)
        outcome = verdict(result.metrics["test_mae"], champion, params.promotion_tolerance)
        _log(result, model, test, params)
        mlflow.set_tags(
            {"model_version": version, "ingest_run_id": ingest_run_id, "verdict": outcome}
        )
        tags = {
            **{k: f"{v:.6g}" for k, v in result.metrics.items()},
            "verdict": outcome,
            "evaluated_by_run": run.info.run_id,
        }
        if champion is not None:
            tags |= {"champion_version": champion_version, "champion_test_mae": f"{champion:.6g}"}
        registry.set_tags(settings.model_name, version, tags)
        logger.info(
            "version %s: test MAE %.0f UF, champion %s, verdict %s",
            version,
            result.metrics["test_mae"],
            champion,
            outcome,
        )
        return outcome


def _log(result: Evaluation, model, test: pd.DataFrame, params: Params) -> None:
    mlflow.log_metrics(result.metrics)
    sectors = result.by_sector.set_index("sector")["mae"]
    mlflow.log_metrics({f"test_mae_{s.replace(' ', '_')}": m for s, m in sectors.items()})
    mlflow.log_table(result.by_sector, "mae_by_sector.json")
    mlflow.log_figure(
        plots.predicted_vs_actual(test[TARGET.name], result.predictions),
        "plots/predicted_vs_actual.png",
    )
    mlflow.log_figure(
        plots.residuals_by_sector(test, result.predictions), "plots/residuals_by_sector.png"
    )
    mlflow.log_figure(
        plots.feature_importance(importance(model, test, params)), "plots/feature_importance.png"
    )


@click.command()
@click.option("--model-version", default="", help="Version to evaluate (default: the newest).")
@click.option(
    "--ingest-run-id",
    default="",
    help="Ingest run whose test split to use (default: the training one).",
)
@cli_errors
def main(model_version: str, ingest_run_id: str) -> None:
    """Score a model version on the test split and tag it with the metrics and a verdict."""
    settings = Settings.from_env()
    configure(settings)
    outcome = run_evaluate(model_version, ingest_run_id, load_params(), settings)
    click.echo(f"verdict: {outcome}")


if __name__ == "__main__":
    main()
