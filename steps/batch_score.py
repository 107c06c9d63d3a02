"""Batch score: price every listing of a data source split with the served model.

Reads:  a split of a data source (`--source`, `--split`) and the model MODEL_URI names.
Writes: the listings with `price` (predicted, UF) and `outside_training_range`, to `--output`
        (CSV) and as the run artifact predictions.csv; a `price` column in the input is kept as
        `actual_price`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
import mlflow
import pandas as pd

from pyfunc.schema import FEATURE_NAMES, TARGET
from pyfunc.settings import Settings
from steps.sources import open_source
from steps.tracking import StepError, cli_errors, configure, step_run

logger = logging.getLogger(__name__)


def score(model, listings: pd.DataFrame) -> pd.DataFrame:
    """Listings with their predicted price; unknown categories are priced and flagged."""
    missing = [name for name in FEATURE_NAMES if name not in listings.columns]
    if missing:
        raise StepError(f"the listings lack column(s) {', '.join(missing)}")
    predictions = model.predict(listings[list(FEATURE_NAMES)],
                                params={"on_unknown_category": "flag"})
    scored = listings.rename(columns={TARGET.name: f"actual_{TARGET.name}"}).reset_index(drop=True)
    return pd.concat([scored, predictions.reset_index(drop=True)], axis=1)


@click.command()
@click.option("--source", default="synthetic", show_default=True,
              help="Folder with the CSVs, SQLAlchemy URL, or 'synthetic'.")
@click.option("--split", default="test", show_default=True,
              help="CSV file stem, table name or SELECT query of the listings to price.")
@click.option("--output", default="predictions.csv", show_default=True, type=click.Path(),
              help="CSV file to write.")
@cli_errors
def main(source: str, split: str, output: str) -> None:
    """Price the listings of a split with MODEL_URI (default: the champion)."""
    settings = Settings.from_env()
    configure(settings)
    with step_run("batch_score"):
        listings = open_source(source, train=split, test="").read("train")
        model = mlflow.pyfunc.load_model(settings.model_uri)
        scored = score(model, listings)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        scored.to_csv(output, index=False)
        mlflow.log_artifact(output, artifact_path="predictions")
        mlflow.log_params({"model_uri": settings.model_uri, "split": split, "rows": len(scored)})
    click.echo(f"priced {len(scored)} listings with {settings.model_uri} -> {output}")


if __name__ == "__main__":
    main()
