"""The Spark engine of batch_score: the same validated pyfunc model as a Spark UDF.

Local mode (`local[*]`) by default; a cluster is one master URL away (--spark-master, or
`spark-submit --master ... -m steps.batch_score ...`). pyspark is the optional `spark` extra,
imported only here, so the serving image stays small.
"""

import os
import sys
from pathlib import Path

import mlflow
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pyfunc.schema import (
    CATEGORICAL_NAMES,
    FEATURE_NAMES,
    FLAG_COLUMN,
    HIGH_COLUMN,
    INVALID_COLUMN,
    LOW_COLUMN,
    NUMERIC_NAMES,
    PREDICTION_COLUMN,
    TARGET,
)
from steps.batch_job import ACTUAL_PRICE, VERSION_COLUMN, Job
from steps.tracking import StepError

RESULT_TYPE = ", ".join(
    [f"{name} double" for name in (PREDICTION_COLUMN, LOW_COLUMN, HIGH_COLUMN)]
    + [f"{name} string" for name in (FLAG_COLUMN, INVALID_COLUMN)]
)
SCORED = "_scored"


def session(master: str) -> SparkSession:
    """A session whose Python workers run this interpreter, unless PYSPARK_PYTHON says
    otherwise (a cluster's executors have their own)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName("property-friends-batch-score")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )


def load(spark: SparkSession, path: str) -> DataFrame:
    """A .csv (with its header) or .parquet file, or a folder of such part files."""
    return spark.read.load(path, format=Path(path).suffix.lower()[1:], header=True)


def read(spark: SparkSession, path: str) -> DataFrame:
    """The listings typed as the pandas engine types them (steps.batch_score.typed)."""
    frame = load(spark, path)
    missing = [name for name in FEATURE_NAMES if name not in frame.columns]
    if missing:
        raise StepError(f"the listings lack column(s) {', '.join(missing)}")
    frame = frame.withColumnRenamed(TARGET.name, ACTUAL_PRICE)  # a no-op without a price column
    return frame.withColumns(
        {
            name: F.col(name).try_cast("double")
            for name in (*NUMERIC_NAMES, ACTUAL_PRICE)
            if name in frame.columns
        }
        | {name: F.col(name).cast("string") for name in CATEGORICAL_NAMES}
    )


def score_with_spark(job: Job, master: str) -> tuple[int, int]:
    """The rows scored and how many of them are invalid."""
    spark = session(master)
    try:
        listings = read(spark, job.input)
        model = mlflow.pyfunc.spark_udf(
            spark, job.model_uri, result_type=RESULT_TYPE, env_manager="local", params=job.params
        )
        scored = (
            listings.withColumn(SCORED, model(F.struct(*FEATURE_NAMES)))
            .select(*listings.columns, f"{SCORED}.*")
            .withColumn(VERSION_COLUMN, F.lit(job.version))
        )
        scored.write.save(
            str(job.output), format=job.output.suffix.lower()[1:], mode="overwrite", header=True
        )
        written = load(spark, str(job.output))
        rows = written.count()
        if rows == 0:
            raise StepError(f"{job.input} has no rows")
        invalid = written.filter(F.col(INVALID_COLUMN) != "").count()
    finally:
        spark.stop()
    return rows, invalid
