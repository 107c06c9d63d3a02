"""A batch scoring job, as both engines of batch_score (pandas, Spark) see it."""

from dataclasses import dataclass
from pathlib import Path

from pyfunc.schema import TARGET

VERSION_COLUMN = "model_version"
ACTUAL_PRICE = f"actual_{TARGET.name}"


@dataclass(frozen=True)
class Job:
    """One batch: where from, where to, which pinned model, with which parameters."""

    input: str
    output: Path
    model_uri: str
    version: str
    params: dict[str, str]
    table: str = ""
