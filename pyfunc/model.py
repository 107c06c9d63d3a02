"""The served model: a PythonModel that validates every input, then delegates to the pipeline."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from modulefinder import ModuleFinder
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from pyfunc import contract, fastpath
from pyfunc.contract import INVALID_ROW_POLICIES, FieldError, ValidationError
from pyfunc.schema import (
    FEATURE_NAMES,
    FLAG_COLUMN,
    HIGH_COLUMN,
    INVALID_COLUMN,
    LOW_COLUMN,
    PREDICTION_COLUMN,
)
from pyfunc.validation import validate, validate_each_row

logger = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
ENTRY = Path(__file__).with_name("served.py")  # MLflow runs it to build the model (from code)
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # where `pyfunc` is importable from
PIPELINE_ARTIFACT = "pipeline"
PROFILE_ARTIFACT = "profile"
COMPILED_ARTIFACT = "compiled"
PIPELINE_COMPRESSION = 3  # zlib level of pipeline.joblib: a third of the size, read only if needed
RUNTIME_PACKAGES = (
    "mlflow",
    "scikit-learn",
    "category_encoders",
    "pandas",
    "numpy",
    "pyarrow",
    "joblib",
    "threadpoolctl",
    "treelite",
)


@dataclass(frozen=True)
class PriceInterval:
    """The price range: from price * exp(log_low) to price * exp(log_high), meant to hold
    `coverage` of real prices (multiplicative: the error grows with the price)."""

    coverage: float
    log_low: float
    log_high: float

    def bounds(self, prices: np.ndarray) -> dict[str, np.ndarray]:
        """The low and high columns of `prices` (NaN where the price is NaN)."""
        low, high = np.exp(self.log_low), np.exp(self.log_high)
        return {LOW_COLUMN: prices * low, HIGH_COLUMN: prices * high}


class InvalidInputError(MlflowException):
    """A validation failure that reaches the client as HTTP 400 with exactly its own message.

    MLflow's scoring server rewrites `message` to prepend a dump of the whole input frame;
    this exception keeps the first message it was given, and carries the structured `errors`
    list into the JSON answer.
    """

    def __init__(self, error: ValidationError):
        errors = [e.as_dict() for e in error.errors]
        super().__init__(str(error), error_code=INVALID_PARAMETER_VALUE, errors=errors)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):
            self._message = value


class PropertyValuationModel(PythonModel):
    """Prices listings in UF; flags values outside the training data's range."""

    def load_context(self, context) -> None:
        """The profile and the compiled pipeline, checked on the probe listings; the fitted
        pipeline is read only if there is no compiled form, or it does not price as it did."""
        profile = json.loads(Path(context.artifacts[PROFILE_ARTIFACT]).read_text())
        self._categories = profile["categories"]
        self._known = {name: frozenset(values) for name, values in self._categories.items()}
        self._ranges = {name: tuple(bounds) for name, bounds in profile["ranges"].items()}
        self._interval = PriceInterval(**context.model_config["interval"])
        self._pipeline_path = Path(context.artifacts[PIPELINE_ARTIFACT])
        self._loaded_pipeline = None
        digest = context.model_config.get("pipeline_sha256")
        if digest is not None and sha256(self._pipeline_path) != digest:
            name = self._pipeline_path.name
            raise ValueError(f"{name} is not the file the model was logged with")
        # The pipeline's arithmetic without pandas, scikit-learn nor per-tree thread start-up;
        # None (use the pipeline) if its shape is unknown or it disagrees with the pipeline.
        compiled = context.artifacts.get(COMPILED_ARTIFACT)
        self._fast = self._load_fast(Path(compiled)) if compiled else None
        if self._fast is None:
            self._fast = fastpath.compile_pipeline(self._pipeline, self._categories, self._ranges)

    def _load_fast(self, folder: Path) -> fastpath.FastPipeline | None:
        try:
            return fastpath.load(folder, self._categories, self._ranges)
        except Exception as exc:  # a damaged compiled form: the pipeline still prices
            logger.warning("compiled pipeline not loaded (%r); compiling the pipeline", exc)
            return None

    @property
    def _pipeline(self):
        """The fitted pipeline, read from its artifact on first use."""
        if self._loaded_pipeline is None:
            self._loaded_pipeline = joblib.load(self._pipeline_path)
        return self._loaded_pipeline

    # The DataFrame hint keeps MLflow from validating or converting the input itself (it does
    # neither for a DataFrame hint); columns (a dict) and records (a list) come in too.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None):
        """Prices, their ranges and flags. With params on_invalid_row="report", a bad row does
        not refuse the batch: it gets no price (nor range) and its reason in `invalid_reason`.

        `model_input` is a DataFrame, or the columns MLflow parses from an `inputs` body
        (name -> numpy array): those are priced without building a DataFrame when clean, and
        answered as records (a list of dicts), which MLflow writes as they are: the same JSON
        as a DataFrame's, without pandas on the way in or out."""
        if isinstance(model_input, dict):
            data = {name: np.asarray(values) for name, values in model_input.items()}
        elif isinstance(model_input, list):  # records of an `inputs` body: 0-d arrays
            data = pd.DataFrame([scalars(r) if isinstance(r, dict) else r for r in model_input])
        else:
            data = (
                model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            )
        params = params or {}
        policy = params.get("on_unknown_category", "reject")
        on_invalid_row = params.get("on_invalid_row", "reject")
        if on_invalid_row not in INVALID_ROW_POLICIES:
            message = contract.not_one_of("on_invalid_row", INVALID_ROW_POLICIES, on_invalid_row)
            raise InvalidInputError(ValidationError([FieldError("on_invalid_row", None, message)]))
        checked, reasons = self._validate(data, policy, each_row=on_invalid_row == "report")
        if on_invalid_row == "reject":
            answer = self._answer(self._prices(checked), checked.flags)
            return records(answer) if isinstance(data, dict) else pd.DataFrame(answer)
        rows = len(checked.flags) + len(reasons)
        priced = np.setdiff1d(np.arange(rows), list(reasons))
        prices = np.full(rows, np.nan)
        flags = np.full(rows, "", dtype=object)
        if len(priced):
            prices[priced] = self._prices(checked)
            flags[priced] = checked.flags
        answer = self._answer(prices, list(flags))
        answer[INVALID_COLUMN] = [reasons.get(r, "") for r in range(rows)]
        return records(answer) if isinstance(data, dict) else pd.DataFrame(answer)

    def _answer(self, prices: np.ndarray, flags: list[str]) -> dict[str, Any]:
        return {PREDICTION_COLUMN: prices, **self._interval.bounds(prices), FLAG_COLUMN: flags}

    def _prices(self, checked: fastpath.CheckedInput) -> np.ndarray:
        if self._fast is not None:
            return self._fast.predict_columns(checked.columns)
        return self._pipeline.predict(checked.frame())

    def _validate(
        self, data: pd.DataFrame | dict, policy: str, each_row: bool
    ) -> tuple[fastpath.CheckedInput, dict[int, str]]:
        """A clean request passes the fast path's checks; anything else gets the validator's
        verdict: with `each_row`, the valid rows and the reason of each invalid one."""
        checked = fastpath.check(data, self._categories, self._ranges, policy, self._known)
        if checked is not None:
            return checked, {}
        try:
            frame = as_frame(data)
            if each_row:
                valid, reasons = validate_each_row(frame, self._categories, self._ranges, policy)
            else:
                valid, reasons = validate(frame, self._categories, self._ranges, policy), {}
        except ValidationError as error:
            raise InvalidInputError(error) from None
        return fastpath.CheckedInput.from_validated(valid), reasons


def scalars(record: dict) -> dict:
    """A record with MLflow's 0-d arrays (an `inputs` list of records) as plain values."""
    return {
        k: v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v for k, v in record.items()
    }


def records(columns: dict[str, Any]) -> list[dict]:
    """Columns as one dict per row of Python values, like `DataFrame.to_dict("records")`."""
    names = list(columns)
    values = [np.asarray(column).tolist() for column in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def as_frame(data: pd.DataFrame | dict[str, np.ndarray]) -> pd.DataFrame:
    """The listings as a DataFrame (numpy's strings as Python's, for the messages)."""
    if isinstance(data, pd.DataFrame):
        return data
    columns = {n: v.astype(object) if v.dtype.kind == "U" else v for n, v in data.items()}
    try:
        return pd.DataFrame(columns)
    except ValueError:
        message = "inputs must hold one list of values per feature, all of the same length"
        raise ValidationError([FieldError("inputs", None, message)]) from None


def signature() -> ModelSignature:
    """Params and outputs; no input schema, so that MLflow hands the request's columns to
    `predict` as parsed, without casting or rebuilding them (a third of a one-row request's
    cost), and the model's validator, the only one that names field, row and allowed values,
    sees what was sent: MLflow's enforcement would coerce "0.5" to a number and drop unknown
    columns silently. The features are documented by the logged input example and
    `pyfunc.schema`; MLflow still checks the params' types and fills their defaults."""
    prices = [ColSpec("double", name) for name in (PREDICTION_COLUMN, LOW_COLUMN, HIGH_COLUMN)]
    outputs = Schema([*prices, ColSpec("string", FLAG_COLUMN)])
    policies = ("on_unknown_category", "on_invalid_row")
    params = ParamSchema([ParamSpec(name, "string", "reject") for name in policies])
    return ModelSignature(inputs=None, outputs=outputs, params=params)


def code_files() -> list[Path]:
    """The source files of the modules the model's entry imports, directly or through other
    modules, lazy imports included: what a logged version's `code/` holds. The standard
    library's module finder reads them from the bytecode, searching this source tree only, so
    installed packages (MLflow, pandas, the standard library) are neither scanned nor copied."""
    finder = ModuleFinder(path=[str(SOURCE_ROOT)])
    finder.run_script(str(ENTRY))
    found = (
        getattr(m, "__file__", None) for name, m in finder.modules.items() if name != "__main__"
    )
    return sorted(Path(file) for file in found if file)


def copy_code(into: Path) -> list[str]:
    """`code_files()` copied under `into` as they lie in the source tree; the top-level
    folders made there, as MLflow's `code_paths`."""
    for file in code_files():
        target = into / file.relative_to(SOURCE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return sorted(str(path) for path in into.iterdir())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_model(
    pipeline,
    profile: dict,
    input_example: pd.DataFrame,
    registered_model_name: str,
    interval: PriceInterval,
):
    """Log the pipeline as a pyfunc model in the active run and register a new version; the
    price range goes in the model's configuration, the modules pricing imports in `code/`.
    With the pipeline (compressed) goes its compiled form when it has one that prices as it
    does: what the served model loads. Their sizes are logged as metrics (model_pipeline_mb,
    model_compiled_mb)."""
    with tempfile.TemporaryDirectory() as tmp:
        pipeline_path, profile_path = Path(tmp) / "pipeline.joblib", Path(tmp) / "profile.json"
        joblib.dump(pipeline, pipeline_path, compress=PIPELINE_COMPRESSION)
        profile_path.write_text(json.dumps(profile, indent=2))
        artifacts = {PIPELINE_ARTIFACT: str(pipeline_path), PROFILE_ARTIFACT: str(profile_path)}
        if save_compiled(pipeline, profile, Path(tmp) / COMPILED_ARTIFACT):
            artifacts[COMPILED_ARTIFACT] = str(Path(tmp) / COMPILED_ARTIFACT)
        config = {"interval": asdict(interval), "pipeline_sha256": sha256(pipeline_path)}
        mlflow.log_metrics(
            {
                "model_pipeline_mb": pipeline_path.stat().st_size / 2**20,
                "model_compiled_mb": folder_mb(Path(tmp) / COMPILED_ARTIFACT),
            }
        )
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=str(ENTRY),
            artifacts=artifacts,
            code_paths=copy_code(Path(tmp) / "code"),
            model_config=config,
            signature=signature(),
            input_example=input_example[list(FEATURE_NAMES)],
            pip_requirements=[f"{p}=={version(p)}" for p in RUNTIME_PACKAGES],
            registered_model_name=registered_model_name,
        )


def folder_mb(folder: Path) -> float:
    """MB on disk of the files under `folder` (0 if there is none)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def save_compiled(pipeline, profile: dict, folder: Path) -> bool:
    """The pipeline's compiled form into `folder`, if it has one that can be saved and prices
    the probe listings as the pipeline does."""
    ranges = {name: tuple(bounds) for name, bounds in profile["ranges"].items()}
    fast = fastpath.compile_pipeline(pipeline, profile["categories"], ranges)
    if fast is None or not fast.savable:
        return False
    expected = fastpath.pipeline_prices(pipeline, profile["categories"], ranges)
    fastpath.save(fast, expected, folder)
    return True
