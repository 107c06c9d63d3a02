"""Batch scoring benchmark: the same generated listings (one million by default) scored by
`steps.batch_score` on pandas and on Spark in local mode, with the champion of a fresh store.

Prints rows/s of each engine (wall time of the whole step: start-up, read, score, write), their
ratio, and whether both gave the same prices and reasons; saves the figures as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from config.settings import PROJECT_DIR
from steps.generate import generate_listings
from tests.benchmarks import bench_stack as stack

logger = logging.getLogger(__name__)

ENGINES = ("pandas", "spark")
OUTPUTS = ["price", "price_low", "price_high", "outside_training_range", "invalid_reason"]
TRAINING_SOURCE = "synthetic:train_rows=8000,test_rows=2000"


def score(env: dict[str, str], engine: str, listings: Path, output: Path) -> float:
    """Wall seconds of `python -m steps.batch_score` on `engine`; fails with its output."""
    command = [
        sys.executable,
        "-m",
        "steps.batch_score",
        "--input",
        str(listings),
        "--output",
        str(output),
        "--engine",
        engine,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise click.ClickException(f"{engine} failed:\n{result.stderr[-3000:]}")
    logger.info("%s", result.stdout.strip())
    return seconds


def agree(outputs: dict[str, Path]) -> dict[str, object]:
    pandas, spark = (pd.read_parquet(outputs[engine], columns=OUTPUTS) for engine in ENGINES)
    prices = np.abs(pandas["price"] - spark["price"]) / pandas["price"]
    return {
        "same_rows": len(pandas) == len(spark),
        "same_reasons": bool((pandas["invalid_reason"] == spark["invalid_reason"]).all()),
        "same_invalid_rows": bool((pandas["price"].isna() == spark["price"].isna()).all()),
        "max_relative_price_difference": float(np.nan_to_num(prices.max())),
    }


@click.command()
@click.option("--rows", type=click.IntRange(min=1), default=1_000_000, show_default=True)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results/batch.json"),
    show_default=True,
)
def main(rows: int, output: Path) -> None:
    """Score `rows` generated listings with both engines and compare."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        env = stack.bench_env(workdir)
        env["PYSPARK_PYTHON"] = os.environ.get("PYSPARK_PYTHON", sys.executable)
        stack.run_pipeline(env, TRAINING_SOURCE, "", workdir / "pipeline.log")
        listings = workdir / "listings.parquet"
        generate_listings(rows, seed=11, dirty=True).to_parquet(listings, index=False)
        outputs = {engine: workdir / f"{engine}.parquet" for engine in ENGINES}
        seconds = {engine: score(env, engine, listings, outputs[engine]) for engine in ENGINES}
        results = {
            "rows": rows,
            "cores": os.cpu_count(),
            "seconds": seconds,
            "rows_per_second": {e: rows / s for e, s in seconds.items()},
            "spark_over_pandas": seconds["pandas"] / seconds["spark"],
            "agreement": agree(outputs),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    click.echo(
        f"\nBatch scoring, {rows:,} generated listings, {os.cpu_count()} cores "
        "(wall time of the whole step)"
    )
    for engine, rate in results["rows_per_second"].items():
        click.echo(f"  {engine:<8}{seconds[engine]:>8.1f} s {rate:>12,.0f} rows/s")
    click.echo(f"  spark / pandas rows/s: {results['spark_over_pandas']:.2f}")
    click.echo(f"  agreement: {results['agreement']}")
    click.echo(f"results saved to {output}")


if __name__ == "__main__":
    main()
