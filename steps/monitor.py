"""Monitor: drift of the recent predictions, and live accuracy against realized prices.

`python -m steps.monitor [drift]` (the default job):
Reads:  the request log (GATEWAY_REQUEST_LOG, JSON lines with the features of each
        successful /invocations call) and the training profile of the served model.
Writes: drift_report.json (PSI per feature, drifted features, threshold) to `--output` and as
        a run artifact; metrics drift_<feature>.

`python -m steps.monitor accuracy`:
Reads:  the prediction store (PREDICTION_STORE_URL): the valuations of the window joined to
        their realized prices (POST /outcomes); each version's test metrics in the registry.
Writes: per model version and sector, MAE, MAPE, coverage of the 80% range, bias and count:
        live_accuracy.json (`--output`), an MLflow run per version (tags model_version,
        window_start, window_end; artifact live_accuracy.json), and the store's
        live_accuracy table, which every gateway exposes on /metrics (model_live_*).
"""

import datetime as dt
import json
import logging
import time
from collections import deque
from pathlib import Path

import click
import mlflow
import pandas as pd

from config.errors import UserError
from config.settings import Settings
from pyfunc.drift import DRIFT_THRESHOLD, MIN_ROWS, drifted, feature_drift
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, normalize_category
from steps.prediction_store import connect, iso, joined_outcomes, publish, store_errors
from steps.registry import load_reference, model_uri, resolve
from steps.tracking import StepError, cli_errors, configure, step_run

logger = logging.getLogger(__name__)


def recent_columns(request_log: Path, last_rows: int) -> dict[str, list]:
    """Feature columns of the last `last_rows` rows priced successfully, oldest first."""
    if not request_log.exists():
        raise StepError(f"request log {request_log} does not exist")
    rows: deque[tuple] = deque(maxlen=last_rows)
    with request_log.open("rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line while the gateway writes
            features = record.get("features") if record.get("status") == 200 else None
            if isinstance(features, dict):
                rows.extend(zip(*(features.get(n, []) for n in FEATURE_NAMES), strict=False))
    columns = {name: [row[i] for row in rows] for i, name in enumerate(FEATURE_NAMES)}
    for name in CATEGORICAL_NAMES:
        columns[name] = [normalize_category(v) if isinstance(v, str) else v for v in columns[name]]
    return columns


def drift_report(reference: dict, columns: dict[str, list], model_uri: str) -> dict:
    scores = feature_drift(reference, columns)
    return {
        "model_uri": model_uri,
        "rows": len(columns[FEATURE_NAMES[0]]),
        "threshold": DRIFT_THRESHOLD,
        "psi": scores,
        "drifted": drifted(scores),
    }


def served_model_uri(settings: Settings) -> str:
    """The version the model server runs (its served-model.json), else MODEL_URI."""
    try:
        return json.loads(settings.model_info_path.read_text())["uri"]
    except (OSError, ValueError, KeyError):
        return settings.model_uri


class _DriftByDefault(click.Group):
    """`python -m steps.monitor --fail-on-drift` stays the drift job: no job named, drift."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["drift", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DriftByDefault)
def cli() -> None:
    """The monitor's jobs: drift (the default) and accuracy."""


@cli.command("drift")
@click.option(
    "--request-log", default="", help="JSON-lines request log (default: GATEWAY_REQUEST_LOG)."
)
@click.option(
    "--model-uri",
    default="",
    help="Model whose training data is the reference "
    "(default: the served version, else MODEL_URI).",
)
@click.option(
    "--last-rows",
    type=click.IntRange(min=MIN_ROWS),
    default=5000,
    show_default=True,
    help="How many of the most recent priced rows to compare.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("drift_report.json"),
    show_default=True,
)
@click.option("--fail-on-drift", is_flag=True, help="Exit with code 3 when a feature drifted.")
@cli_errors
def main(
    request_log: str, model_uri: str, last_rows: int, output: Path, fail_on_drift: bool
) -> None:
    """Compare recent traffic with the training data, feature by feature (PSI)."""
    settings = configure()
    model_uri = model_uri or served_model_uri(settings)
    columns = recent_columns(Path(request_log or settings.gateway_request_log), last_rows)
    report = drift_report(load_reference(model_uri), columns, model_uri)
    if not report["psi"]:
        raise StepError(
            f"only {report['rows']} priced rows in the request log; "
            f"at least {MIN_ROWS} are needed to measure drift"
        )
    with step_run("monitor"):
        mlflow.log_dict(report, "drift_report.json")
        mlflow.log_metrics({f"drift_{name}": score for name, score in report["psi"].items()})
    output.write_text(json.dumps(report, indent=2))
    click.echo(
        f"{report['rows']} rows; drifted: {', '.join(report['drifted']) or 'none'} "
        f"(PSI > {DRIFT_THRESHOLD}); report: {output}"
    )
    if fail_on_drift and report["drifted"]:
        raise SystemExit(3)


ALL_SECTORS = "all"  # the sector of a version's figures over every sector (gateway.outcomes)
# accuracy_table's column -> the gauge the gateway exposes it as (gateway.outcomes.LIVE_GAUGES)
GAUGES = {
    "mae": "model_live_mae_uf",
    "mape": "model_live_mape_ratio",
    "coverage": "model_live_coverage_ratio",
    "bias": "model_live_bias_uf",
    "count": "model_live_outcomes",
}


def accuracy_table(joined: pd.DataFrame) -> pd.DataFrame:
    """Per model version and sector, and per version over every sector (sector "all"): mae,
    mape, coverage (share of realized prices inside [price_low, price_high]; rows without a
    range left out), bias (mean of predicted minus realized) and count."""
    frame = joined.assign(
        error=joined["predicted"] - joined["realized"],
        covered=(joined["price_low"] <= joined["realized"])
        & (joined["realized"] <= joined["price_high"]),
    )
    frame["covered"] = frame["covered"].where(
        frame[["price_low", "price_high"]].notna().all(axis=1)
    )
    per_sector = _figures(frame.groupby(["model_version", "sector"]))
    overall = _figures(frame.groupby("model_version")).assign(sector=ALL_SECTORS)
    table = pd.concat([overall, per_sector], ignore_index=True)
    return table.sort_values(["model_version", "sector"], ignore_index=True)


def _figures(groups) -> pd.DataFrame:
    return groups.apply(
        lambda g: pd.Series(
            {
                "mae": g["error"].abs().mean(),
                "mape": (g["error"].abs() / g["realized"]).mean(),
                "coverage": g["covered"].astype(float).mean(),
                "bias": g["error"].mean(),
                "count": float(len(g)),
            }
        ),
        include_groups=False,
    ).reset_index()


def gauge_rows(
    table: pd.DataFrame, test_mae: dict[str, float], settings: Settings, computed_at: float
) -> list[tuple[str, str, str, float]]:
    """(version, sector, gauge, value) rows of the store's live_accuracy table: the figures,
    each version's test MAE and alert limit, and the alert settings."""
    rows = [
        (str(r.model_version), str(r.sector), gauge, float(getattr(r, column)))
        for r in table.itertuples()
        for column, gauge in GAUGES.items()
        if pd.notna(getattr(r, column))
    ]
    for version, mae in test_mae.items():
        rows.append((version, "", "model_test_mae_uf", mae))
        rows.append((version, "", "model_live_mae_limit_uf", settings.monitor_mae_factor * mae))
    rows += [
        ("", "", "model_live_min_outcomes", float(settings.monitor_min_outcomes)),
        ("", "", "model_live_coverage_band_ratio", settings.monitor_coverage_band),
        ("", "", "model_live_accuracy_updated_timestamp_seconds", computed_at),
    ]
    return rows


def test_maes(name: str, versions: list[str]) -> dict[str, float]:
    """The test MAE each registered version was evaluated with (versions without one left
    out)."""
    found = {}
    for version in versions:
        try:
            metrics = resolve(model_uri(name, version))["metrics"]
        except UserError as error:  # a version deleted since, or not in this registry
            logger.warning("no test metrics for version %s: %s", version, error)
            continue
        if "test_mae" in metrics:
            found[version] = metrics["test_mae"]
    return found


def log_runs(table: pd.DataFrame, test_mae: dict[str, float], start: str, end: str) -> None:
    """One MLflow run per version for this window: figures over every sector as metrics, per
    sector as `<figure>_<sector>`, the whole table as live_accuracy.json."""
    for version, rows in table.groupby("model_version"):
        overall = rows[rows["sector"] == ALL_SECTORS].iloc[0]
        with mlflow.start_run(
            run_name=f"live-accuracy-v{version}", nested=mlflow.active_run() is not None
        ):
            mlflow.set_tags(
                {"step": "monitor-accuracy", "model_version": version,
                 "window_start": start, "window_end": end}
            )  # fmt: skip
            metrics = {k: float(overall[k]) for k in GAUGES if pd.notna(overall[k])}
            for r in rows[rows["sector"] != ALL_SECTORS].itertuples():
                metrics[f"mae_{r.sector.replace(' ', '_')}"] = float(r.mae)
                metrics[f"count_{r.sector.replace(' ', '_')}"] = float(r.count)
            if str(version) in test_mae:
                metrics["test_mae"] = test_mae[str(version)]
            mlflow.log_metrics(metrics)
            mlflow.log_dict(rows.to_dict("records"), "live_accuracy.json")


def _test_mae(maes: dict[str, float], version: str) -> str:
    return f"test {maes[version]:,.0f}" if version in maes else "no test MAE in the registry"


def _window_end(end: str) -> dt.datetime:
    if not end:
        return dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(end)
    except ValueError:
        raise StepError(f"--end must be a date or time such as 2026-12-01, got {end!r}") from None
    return moment.replace(tzinfo=moment.tzinfo or dt.UTC)


@cli.command("accuracy")
@click.option(
    "--window-days",
    type=click.FloatRange(min=0),
    default=0,
    help="Valuations of the last this many days (0: MONITOR_WINDOW_DAYS).",
)
@click.option("--end", default="", help="End of the window, UTC, e.g. 2026-12-01 (default: now).")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=Path("live_accuracy.json"),
    show_default=True,
)
@cli_errors
def accuracy(window_days: float, end: str, output: Path) -> None:
    """Live accuracy per model version and sector, from the realized prices received."""
    settings = configure()
    until = _window_end(end)
    start = until - dt.timedelta(days=window_days or settings.monitor_window_days)
    engine = connect(settings.prediction_store_url)
    try:
        with store_errors():
            joined = joined_outcomes(engine, start, until)
            table = (
                accuracy_table(joined) if len(joined) else pd.DataFrame(columns=["model_version"])
            )
            maes = test_maes(settings.model_name, sorted(table["model_version"].unique()))
            publish(engine, gauge_rows(table, maes, settings, time.time()))
    finally:
        engine.dispose()
    log_runs(table, maes, iso(start), iso(until))
    output.write_text(json.dumps(table.to_dict("records"), indent=2))
    click.echo(
        f"{len(joined)} realized prices joined to valuations from {iso(start)} to {iso(until)}"
    )
    for r in table[table["sector"] == ALL_SECTORS].itertuples() if len(table) else ():
        click.echo(
            f"version {r.model_version}: {int(r.count)} outcomes, MAE {r.mae:,.0f} UF "
            f"({_test_mae(maes, r.model_version)}), MAPE {r.mape:.1%}, "
            f"coverage {r.coverage:.1%}, bias {r.bias:+,.0f} UF"
        )


if __name__ == "__main__":
    cli()
