"""Batch score: price a file or table of listings with a registered model, on pandas or Spark.

Reads:  --input, a .csv or .parquet file, or (pandas engine) a SQLAlchemy URL with --table;
        the model --model-uri names (default MODEL_URI: the champion), pinned to its version.
Writes: --output (.parquet or .csv; with Spark, a folder of part files): every input row, in
        order, with `price` (UF), its range `price_low` and `price_high`,
        `outside_training_range`, `invalid_reason` and `model_version`. A row that fails
        validation gets no price (nor range) and its reason instead: one
        bad row never sinks the batch, and rows in = rows out. An input `price` column is kept
        as `actual_price`. Both engines read the input alike (numbers that do not parse are
        nulls, categories are text), so they give the same prices and the same reasons.
"""

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import click
import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, INVALID_COLUMN, NUMERIC_NAMES, TARGET
from steps.batch_job import ACTUAL_PRICE, VERSION_COLUMN, Job
from steps.registry import resolve
from steps.sources import open_source
from steps.tracking import StepError, cli_errors, configure, step_run

logger = logging.getLogger(__name__)

ENGINES = ("pandas", "spark")
FORMATS = (".csv", ".parquet")


def check_paths(input_spec: str, output: str, engine: str, table: str) -> None:
    """Fail before any work on a missing input, an unknown format or a table without a URL."""
    if "://" in input_spec:
        if engine != "pandas":
            raise StepError(
                "a SQLAlchemy URL input is read by the pandas engine only: "
                "export the table to Parquet for Spark"
            )
        if not table:
            raise StepError("--table (a table name or a SELECT query) is required with a URL")
    elif Path(input_spec).suffix.lower() not in FORMATS:
        raise StepError(f"--input must end in {' or '.join(FORMATS)}, got {input_spec!r}")
    elif not Path(input_spec).exists():
        raise StepError(f"--input {input_spec} does not exist")
    if Path(output).suffix.lower() not in FORMATS:
        raise StepError(f"--output must end in {' or '.join(FORMATS)}, got {output!r}")


def pinned(model_uri: str) -> tuple[str, str]:
    """The model URI pinned to a version (an alias can move during a batch) and that version;
    StepError if that model cannot report invalid rows one by one."""
    info = resolve(model_uri)
    signature = mlflow.models.get_model_info(info["uri"]).signature
    params = signature.params.params if signature and signature.params else []
    if "on_invalid_row" not in {param.name for param in params}:
        raise StepError(
            f"{info['uri']} predates per-row reports of invalid listings: train a "
            "new version (mlflow run . -e main) to batch score with it"
        )
    return info["uri"], info["version"]


def typed(chunk: pd.DataFrame) -> pd.DataFrame:
    """The features as the model reads them: numbers as float64 (what does not parse is null),
    categories as text or None. A `price` column becomes `actual_price`, a number too."""
    chunk = chunk.rename(columns={TARGET.name: ACTUAL_PRICE})
    for name in (*NUMERIC_NAMES, ACTUAL_PRICE):
        if name in chunk.columns:
            chunk[name] = pd.to_numeric(chunk[name], errors="coerce").astype("float64")
    for name in CATEGORICAL_NAMES:
        if name in chunk.columns:
            text = chunk[name].astype("string")
            chunk[name] = text.astype(object).where(text.notna(), None)
    return chunk


def read_chunks(job: Job, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if "://" in job.input:
        frame = open_source(job.input, train=job.table, test="").read("train")
        for start in range(0, len(frame), chunk_rows):
            yield frame.iloc[start : start + chunk_rows].reset_index(drop=True)
    elif job.input.lower().endswith(".parquet"):
        for batch in pq.ParquetFile(job.input).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    else:
        categories = dict.fromkeys(CATEGORICAL_NAMES, "string")
        yield from pd.read_csv(job.input, chunksize=chunk_rows, dtype=categories)


def score_chunk(model, chunk: pd.DataFrame, job: Job) -> pd.DataFrame:
    missing = [name for name in FEATURE_NAMES if name not in chunk.columns]
    if missing:
        raise StepError(f"the listings lack column(s) {', '.join(missing)}")
    listings = typed(chunk).reset_index(drop=True)
    scored = model.predict(listings[list(FEATURE_NAMES)], params=job.params)
    return pd.concat([listings, scored.reset_index(drop=True)], axis=1).assign(
        **{VERSION_COLUMN: job.version}
    )


class ChunkWriter:
    """Appends scored chunks to one CSV or Parquet file."""

    def __init__(self, path: Path):
        self.path = path
        self._parquet: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, chunk: pd.DataFrame) -> None:
        if self.path.suffix.lower() == ".csv":
            first = not self._rows
            chunk.to_csv(self.path, mode="w" if first else "a", header=first, index=False)
        else:
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self._rows += len(chunk)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()


def score_with_pandas(job: Job, chunk_rows: int) -> tuple[int, int]:
    """Score chunk by chunk, logging progress; the whole input never sits in memory twice.
    Returns the rows scored and how many of them are invalid."""
    model = mlflow.pyfunc.load_model(job.model_uri)
    started, rows, invalid = time.perf_counter(), 0, 0
    writer = ChunkWriter(job.output)
    try:
        for chunk in filter(len, read_chunks(job, chunk_rows)):
            scored = score_chunk(model, chunk, job)
            writer.write(scored)
            rows += len(scored)
            invalid += int((scored[INVALID_COLUMN] != "").sum())
            rate = rows / (time.perf_counter() - started)
            logger.info("scored %s", f"{rows:,} rows ({invalid:,} invalid), {rate:,.0f} rows/s")
    finally:
        writer.close()
    if rows == 0:
        raise StepError(f"{job.input} has no rows")
    return rows, invalid


@click.command()
@click.option(
    "--input",
    "input_spec",
    required=True,
    help="A .csv or .parquet file, or a SQLAlchemy URL (pandas engine, with --table).",
)
@click.option("--output", required=True, help="A .parquet or .csv path to write.")
@click.option("--engine", type=click.Choice(ENGINES), default="pandas", show_default=True)
@click.option("--model-uri", default="", help="Model to score with (default: MODEL_URI).")
@click.option("--table", default="", help="Table name or SELECT query, with a URL input.")
@click.option(
    "--on-unknown-category",
    type=click.Choice(["reject", "flag"]),
    default="reject",
    show_default=True,
    help="An unknown sector or type: an invalid row, or priced and flagged.",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Rows per chunk (pandas engine).",
)
@click.option(
    "--spark-master",
    default="local[*]",
    show_default=True,
    help="Spark master URL (spark engine), e.g. spark://host:7077.",
)
@cli_errors
def main(
    input_spec: str,
    output: str,
    engine: str,
    model_uri: str,
    table: str,
    on_unknown_category: str,
    chunk_rows: int,
    spark_master: str,
) -> None:
    """Price every listing of a file or table; invalid rows get their reason, not a price."""
    settings = configure()
    check_paths(input_spec, output, engine, table)
    uri, version = pinned(model_uri or settings.model_uri)
    params = {"on_unknown_category": on_unknown_category, "on_invalid_row": "report"}
    job = Job(input_spec, Path(output), uri, version, params, table)
    job.output.parent.mkdir(parents=True, exist_ok=True)
    with step_run("batch_score"):
        mlflow.log_params(
            {"engine": engine, "input": input_spec, "on_unknown_category": on_unknown_category}
        )
        mlflow.set_tags({"model_uri": uri, "model_version": version})
        started = time.perf_counter()
        if engine == "spark":
            from steps.spark_score import score_with_spark

            rows, invalid = score_with_spark(job, spark_master)
        else:
            rows, invalid = score_with_pandas(job, chunk_rows)
        seconds = time.perf_counter() - started
        mlflow.log_metrics(
            {"rows": rows, "invalid_rows": invalid, "rows_per_second": rows / seconds}
        )
    click.echo(
        f"priced {rows - invalid:,} of {rows:,} listings ({invalid:,} invalid, reasons in "
        f"{INVALID_COLUMN}) with {uri} on {engine} in {seconds:.1f} s -> {output}"
    )


if __name__ == "__main__":
    main()
