"""Monitor: a drift report of the recent predictions in the gateway's request log.

Reads:  the request log (GATEWAY_REQUEST_LOG, JSON lines with the features of each
        successful /invocations call) and the training profile of the served model.
Writes: drift_report.json (PSI per feature, drifted features, threshold) to `--output` and as
        a run artifact; metrics drift_<feature>.
"""

import json
import logging
from collections import deque
from pathlib import Path

import click
import mlflow

from config.settings import Settings
from pyfunc.drift import DRIFT_THRESHOLD, MIN_ROWS, drifted, feature_drift
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, normalize_category
from steps.registry import load_reference
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


@click.command()
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


if __name__ == "__main__":
    main()
