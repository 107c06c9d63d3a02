"""Ingest: read raw listings from a data source, check the schema, clean, and account for it.

Reads:  a data source (`--source`: a folder with train.csv/test.csv, a SQLAlchemy URL with
        tables or queries, or `synthetic`).
Writes: run artifacts clean/train.parquet, clean/test.parquet and ingest_report.json;
        metrics `<split>_rows_read`, `<split>_rows_kept`, `<split>_dropped_<reason>`, ...
"""

import logging
from dataclasses import asdict, dataclass

import click
import mlflow
import pandas as pd
from sklearn.model_selection import train_test_split

from pyfunc.schema import CATEGORICAL_NAMES
from steps.cleaning import COLUMNS, CleaningReport, DataError, check_schema, clean
from steps.params import Params, load_params
from steps.sources import DataSource, open_source
from steps.tracking import cli_errors, configure, log_frame, step_run

logger = logging.getLogger(__name__)

CLEAN_TRAIN = "clean/train.parquet"
CLEAN_TEST = "clean/test.parquet"
REPORT = "ingest_report.json"


@dataclass(frozen=True)
class IngestResult:
    train: pd.DataFrame
    test: pd.DataFrame
    reports: dict[str, CleaningReport]


def ingest(source: DataSource, params: Params) -> IngestResult:
    """Clean train and test splits; the test split keeps only categories seen in training."""
    where = source.describe()
    raw_train = source.read("train")
    train = check_schema(raw_train, f"{where} [train]")
    if source.has_split("test"):
        raw_test = source.read("test")
        test = check_schema(raw_test, f"{where} [test]")
    else:
        train, test = train_test_split(train, test_size=params.test_size, random_state=params.seed)
        raw_test = test
    clean_train, train_report = clean(train)
    if clean_train.empty:
        raise DataError(f"{where} [train]: no row left after cleaning ({train_report.dropped})")
    known = {name: sorted(clean_train[name].unique()) for name in CATEGORICAL_NAMES}
    clean_test, test_report = clean(test, known_categories=known)
    if clean_test.empty:
        raise DataError(f"{where} [test]: no row left after cleaning ({test_report.dropped})")
    train_report.ignored_columns = _ignored(raw_train)
    test_report.ignored_columns = _ignored(raw_test)
    return IngestResult(clean_train, clean_test, {"train": train_report, "test": test_report})


def _ignored(raw: pd.DataFrame) -> list[str]:
    return [str(c) for c in raw.columns if c not in COLUMNS]


def report_metrics(reports: dict[str, CleaningReport]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, report in reports.items():
        metrics |= {f"{split}_rows_read": report.rows_read, f"{split}_rows_kept": report.rows_kept}
        for kind in ("dropped", "repaired", "flagged"):
            metrics |= {f"{split}_{kind}_{why}": n for why, n in getattr(report, kind).items()}
    return metrics


def run_ingest(source_spec: str, train_name: str, test_name: str, params: Params) -> str:
    """Ingest in a step run; returns the run id whose artifacts hold the clean splits."""
    with step_run("ingest") as run:
        source = open_source(source_spec, train=train_name, test=test_name)
        mlflow.log_params({"train": train_name, "test": test_name})
        mlflow.set_tag("source", source.describe())
        result = ingest(source, params)
        log_frame(result.train, CLEAN_TRAIN)
        log_frame(result.test, CLEAN_TEST)
        mlflow.log_dict({s: asdict(r) for s, r in result.reports.items()}, REPORT)
        mlflow.log_metrics(report_metrics(result.reports))
        for split, report in result.reports.items():
            logger.info(
                "%(split)s: kept %(rows_kept)d of %(rows_read)d rows; dropped %(dropped)s; "
                "repaired %(repaired)s; flagged %(flagged)s",
                {"split": split, **asdict(report)},
            )
        return run.info.run_id


SOURCE_OPTION = click.option(
    "--source",
    default="synthetic",
    show_default=True,
    help="Folder with the CSVs, SQLAlchemy URL, or 'synthetic[:seed=..,train_rows=..]'.",
)


def source_options(command):
    """--source, --train and --test: where the listings come from (shared by ingest and main)."""
    command = click.option(
        "--test",
        "test_name",
        default="test",
        show_default=True,
        help="Test split; empty to split the training data (params.yaml split.test_size).",
    )(command)
    command = click.option(
        "--train",
        "train_name",
        default="train",
        show_default=True,
        help="Training split: CSV file stem, table name or SELECT query.",
    )(command)
    return SOURCE_OPTION(command)


@click.command()
@source_options
@cli_errors
def main(source: str, train_name: str, test_name: str) -> None:
    """Read, check and clean the listings; log the clean splits and the cleaning report."""
    configure()
    run_id = run_ingest(source, train_name, test_name, load_params())
    click.echo(f"ingest run: {run_id}")


if __name__ == "__main__":
    main()
