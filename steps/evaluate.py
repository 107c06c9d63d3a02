"""Evaluate: score a registered model version on the test split and compare with the champion.

Reads:  the model version (`--model-version`, default the newest) and clean/test.parquet of the
        ingest run its training used (or `--ingest-run-id`).
Writes: metrics test_mae, test_rmse, test_mape, test_r2, test_interval_coverage (share of
        prices inside their range), test_interval_width (median width / price), and per sector
        test_mae_<sector>, test_interval_coverage_<sector>, test_interval_width_<sector>;
        plots (predicted vs actual, residuals and price ranges by sector, permutation
        importance); and tags on the model version: the same metrics, the champion's MAE on
        the same rows and a verdict.
"""

import logging
from dataclasses import dataclass

import click
import mlflow
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.inspection import permutation_importance

from config.settings import Settings
from pyfunc.schema import FEATURE_NAMES, LOW_COLUMN, PREDICTION_COLUMN, TARGET
from steps import plots, registry
from steps.ingest import CLEAN_TEST
from steps.intervals import interval_hits
from steps.params import Params, load_params
from steps.selection import METRICS
from steps.tracking import StepError, cli_errors, configure, load_frame, step_run

logger = logging.getLogger(__name__)


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
    metrics = {f"test_{name}": float(f(y_true, y_pred)) for name, f in METRICS.items()}
    return metrics | {
        "test_rows": int(scored.sum()),
        "test_rows_excluded_nonpositive_price": int((~scored).sum()),
    }


def evaluate(model, test: pd.DataFrame) -> Evaluation:
    """Metrics overall and by sector; those of the price range when the model answers one."""
    answer = model.predict(test[list(FEATURE_NAMES)])
    actual, predictions = test[TARGET.name].to_numpy(), answer[PREDICTION_COLUMN].to_numpy()
    rows = pd.DataFrame({"sector": test["sector"].to_numpy(), "mae": np.abs(actual - predictions)})
    aggregates = {"mae": ("mae", "mean"), "rows": ("mae", "size")}
    metrics = regression_metrics(actual, predictions)
    if LOW_COLUMN in answer.columns:  # versions from before price ranges have none
        rows = pd.concat([rows, interval_hits(actual, answer)], axis=1)
        ranges = {"interval_coverage": "mean", "interval_width": "median"}
        aggregates |= {name: (name, how) for name, how in ranges.items()}
        metrics |= {f"test_{name}": float(rows[name].agg(how)) for name, how in ranges.items()}
    by_sector = rows.groupby("sector").agg(**aggregates).reset_index()
    return Evaluation(metrics, by_sector, predictions)


def sector_metrics(by_sector: pd.DataFrame) -> dict[str, float]:
    """`test_<column>_<sector>` for every column of `by_sector` but the row count."""
    table = by_sector.set_index("sector").drop(columns="rows")
    return {
        f"test_{column}_{sector.replace(' ', '_')}": float(value)
        for column, values in table.items()
        for sector, value in values.items()
    }


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
        return self.model.predict(frame[list(FEATURE_NAMES)])[PREDICTION_COLUMN].to_numpy()


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
    version = version or registry.latest_version(settings.candidate_model_name)
    with step_run("evaluate") as run:
        uri = registry.model_uri(settings.candidate_model_name, version)
        run_id = registry.lookup(uri).run_id or ""
        ingest_run_id = ingest_run_id or mlflow.get_run(run_id).data.tags.get("ingest_run_id", "")
        if not ingest_run_id:
            raise StepError(f"version {version} does not name its ingest run; pass --ingest-run-id")
        test = load_frame(ingest_run_id, CLEAN_TEST)
        model = mlflow.pyfunc.load_model(uri)
        result = evaluate(model, test)
        champion_version, champion = champion_mae(settings, version, test, against)
        outcome = verdict(result.metrics["test_mae"], champion, params.promotion_tolerance)
        metrics = result.metrics | sector_metrics(result.by_sector)
        mlflow.log_metrics(metrics)
        mlflow.log_table(result.by_sector, "mae_by_sector.json")
        _log_figures(result, model, test, params)
        mlflow.set_tags(
            {"model_version": version, "ingest_run_id": ingest_run_id, "verdict": outcome}
        )
        tags = {k: f"{v:.6g}" for k, v in metrics.items()}
        tags |= {"verdict": outcome, "evaluated_by_run": run.info.run_id}
        if champion_version is not None:  # and so is its MAE
            tags |= {"champion_version": champion_version, "champion_test_mae": f"{champion:.6g}"}
        registry.set_tags(settings.candidate_model_name, version, tags)
        mae = result.metrics["test_mae"]
        logger.info(
            "version %s: test MAE %.0f UF, champion %s, verdict %s", version, mae, champion, outcome
        )
        return outcome


def _log_figures(result: Evaluation, model, test: pd.DataFrame, params: Params) -> None:
    figures = {
        "predicted_vs_actual": plots.predicted_vs_actual(test[TARGET.name], result.predictions),
        "residuals_by_sector": plots.residuals_by_sector(test, result.predictions),
        "feature_importance": plots.feature_importance(importance(model, test, params)),
    }
    if "interval_coverage" in result.by_sector:
        coverage = model.model_config["interval"]["coverage"]
        figures["intervals_by_sector"] = plots.intervals_by_sector(result.by_sector, coverage)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")


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
    settings = configure()
    outcome = run_evaluate(model_version, ingest_run_id, load_params(), settings)
    click.echo(f"verdict: {outcome}")


if __name__ == "__main__":
    main()
