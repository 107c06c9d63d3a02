"""The served model's hot path: the same numbers as the fitted pipeline, without its per-call cost.

The fitted objects are read once, at load. `check` validates a clean request with numpy and
leaves anything else to `pyfunc.validation.validate`, the only source of error messages;
`FastPipeline` computes the engineered feature inline, target-encodes with tables made by the
fitted encoder and runs the regressor compiled by `pyfunc.compiled`. `compile_pipeline` returns
None (the model then uses the pipeline) for a pipeline it does not know, or whose fast
predictions differ from `pipeline.predict` on probe rows (tests/unit/test_fast_path.py).

`save` writes the fast form with the pipeline's prices of the probe rows; `load` reads it back
without scikit-learn and accepts it only if it prices the probe rows as the pipeline did.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from pyfunc.compiled import CompiledRegressor, compile_regressor
from pyfunc.contract import UNKNOWN_CATEGORY_POLICIES, fractional, outside_bounds
from pyfunc.features import (
    BUSINESS_DISTRICT,
    ENGINEERED_FEATURES,
    KM_PER_DEGREE,
    add_engineered_features,
)
from pyfunc.schema import (
    CATEGORICAL_NAMES,
    FEATURE_NAMES,
    NUMERIC_BY_NAME,
    NUMERIC_NAMES,
    normalize_category,
)
from pyfunc.validation import ValidatedInput, joined_flags, unreliable

logger = logging.getLogger(__name__)

PROBE_ROWS = 300
PROBE_CHUNK_ROWS = 48  # the probe goes through in chunks of one row, of this many, and the rest
FAST_INDEX = "fastpath.json"
RELATIVE_TOLERANCE = 1e-9
_UNKNOWN = "\x00unknown category\x00"
_FEATURE_SET = frozenset(FEATURE_NAMES)

# Category spellings seen recently, normalized once (bounded: clients choose the strings).
_normalize = lru_cache(maxsize=4096)(normalize_category)


@dataclass(frozen=True)
class CheckedInput:
    """Validated listings as columns (float64 arrays; normalized category strings) and flags."""

    columns: Mapping[str, np.ndarray]
    flags: list[str]

    @classmethod
    def from_validated(cls, checked: ValidatedInput) -> CheckedInput:
        return cls(_columns(checked.frame), checked.flags)

    def frame(self) -> pd.DataFrame:
        """The features as `validate` returns them, for the fitted pipeline."""
        categorical = {n: self.columns[n].tolist() for n in CATEGORICAL_NAMES}
        return pd.DataFrame({n: categorical.get(n, self.columns[n]) for n in FEATURE_NAMES})


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    columns = {n: frame[n].to_numpy(dtype="float64") for n in NUMERIC_NAMES}
    return columns | {n: frame[n].to_numpy(dtype=object) for n in CATEGORICAL_NAMES}


def check(
    frame: pd.DataFrame | Mapping[str, np.ndarray],
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
    on_unknown_category: str = "reject",
    known_sets: Mapping[str, frozenset[str]] | None = None,
) -> CheckedInput | None:
    """The listings (a DataFrame, or columns as MLflow parses an `inputs` body) if they are
    clean, exactly as `validate` would accept and flag them; None when anything is off, so
    that `validate` says what (it is the only one that does)."""
    names = list(frame.keys())
    if (
        on_unknown_category not in UNKNOWN_CATEGORY_POLICIES
        or len(names) != len(FEATURE_NAMES)
        or set(names) != _FEATURE_SET
        or any(np.ndim(frame[n]) != 1 for n in names)
        or len({len(frame[n]) for n in names}) != 1
        or len(frame[names[0]]) == 0
    ):
        return None
    columns: dict[str, np.ndarray] = {}
    for name in NUMERIC_NAMES:
        if (values := _clean_numbers(frame[name], name)) is None:
            return None
        columns[name] = values
    flagged: list[tuple[str, np.ndarray]] = []
    for name in CATEGORICAL_NAMES:
        known = known_sets[name] if known_sets else frozenset(known_categories[name])
        checked = _clean_categories(frame[name], known)
        if checked is None:
            return None
        columns[name], unknown = checked
        if unknown.any():
            if on_unknown_category == "reject":
                return None
            flagged.append((name, unknown))
    flagged += unreliable(columns, training_ranges)
    return CheckedInput(columns, joined_flags(len(columns[NUMERIC_NAMES[0]]), flagged))


def _clean_numbers(column: pd.Series | np.ndarray, name: str) -> np.ndarray | None:
    """float64 values if the column is numeric and every value passes the contract's rules."""
    if column.dtype.kind not in "iuf":  # not bool, object, complex...: `validate` decides
        return None
    if isinstance(column, pd.Series):
        values = column.to_numpy(dtype="float64", na_value=np.nan)
    else:
        values = np.asarray(column, dtype="float64")
    feature = NUMERIC_BY_NAME[name]
    ok = (
        np.isfinite(values).all()
        and not outside_bounds(feature, values).any()
        and not (feature.integral and fractional(feature, values).any())
    )
    return values if ok else None


def _clean_categories(
    column: pd.Series | np.ndarray, known: frozenset[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalized strings and a mask of unknown ones; None if a value is not a string."""
    raw = column.to_numpy(dtype=object) if isinstance(column, pd.Series) else column.astype(object)
    normalized = [_normalize(v) if isinstance(v, str) else None for v in raw]
    if None in normalized:
        return None
    unknown = np.fromiter((v not in known for v in normalized), dtype=bool, count=len(raw))
    return np.array(normalized, dtype=object), unknown


@dataclass(frozen=True)
class FastPipeline:
    """The fitted pipeline's arithmetic on numpy columns; `predict` equals `pipeline.predict`."""

    layout: tuple[str, ...]  # the regressor's input columns, in order
    encodings: Mapping[str, Mapping[str, float]]
    unknown_encoding: Mapping[str, float]
    regressor: CompiledRegressor  # the fitted regressor
    inverse_exp: bool
    target_transformer: Any | None

    @property
    def savable(self) -> bool:
        return self.target_transformer is None and self.regressor.savable

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Prices of validated features (as `validate` returns them)."""
        return self.predict_columns(_columns(frame))

    def predict_columns(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Prices of validated columns (float64 numbers, normalized category strings)."""
        rows = len(columns[NUMERIC_NAMES[0]])
        matrix = np.empty((rows, len(self.layout)))
        for j, name in enumerate(self.layout):
            if name in self.encodings:
                table, unknown = self.encodings[name], self.unknown_encoding[name]
                matrix[:, j] = [table.get(v, unknown) for v in columns[name]]
            elif name == ENGINEERED_FEATURES[0]:
                matrix[:, j] = km_to_business_district(columns["latitude"], columns["longitude"])
            else:
                matrix[:, j] = columns[name]
        predicted = self.regressor(matrix)
        if self.inverse_exp:
            return np.exp(predicted)
        if self.target_transformer is not None:
            return np.asarray(
                self.target_transformer.inverse_transform(predicted.reshape(-1, 1))
            ).ravel()
        return predicted


def km_to_business_district(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """`add_engineered_features`'s distance, with the same operations in the same order."""
    lat0, lon0 = BUSINESS_DISTRICT
    dy = (latitude - lat0) * KM_PER_DEGREE
    dx = (longitude - lon0) * KM_PER_DEGREE * np.cos(np.radians(lat0))
    return np.hypot(dx, dy)


def build(pipeline) -> FastPipeline | None:
    """The fast form of a fitted pipeline of the project's shape, or None for any other."""
    from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
    from sklearn.preprocessing import FunctionTransformer

    steps = dict(pipeline.steps)
    if list(steps) not in (["features", "encode", "model"], ["encode", "model"]):
        return None
    features, encode, model = steps.get("features"), steps["encode"], steps["model"]
    if features is not None and not (
        isinstance(features, FunctionTransformer)
        and features.func is add_engineered_features
        and features.kw_args is None
        and ENGINEERED_FEATURES == ("km_to_business_district",)
    ):
        return None
    encodings = _encodings(encode) if isinstance(encode, ColumnTransformer) else None
    if encodings is None:
        return None
    layout = tuple(str(n) for n in encode.get_feature_names_out())
    allowed = set(FEATURE_NAMES) | (set(ENGINEERED_FEATURES) if features is not None else set())
    if set(layout) - allowed or not set(encodings[0]) <= set(layout):
        return None
    inverse_exp, target_transformer, regressor = False, None, model
    if isinstance(model, TransformedTargetRegressor):
        regressor = model.regressor_
        inverse_exp = model.func is np.log and model.inverse_func is np.exp
        target_transformer = None if inverse_exp else model.transformer_
    compiled = None if hasattr(regressor, "feature_names_in_") else compile_regressor(regressor)
    if compiled is None:
        return None
    return FastPipeline(layout, *encodings, compiled, inverse_exp, target_transformer)


def _encodings(encode) -> tuple[dict[str, dict[str, float]], dict[str, float]] | None:
    """Per encoded column, category -> the fitted encoder's output, and its unknown value.

    The table is made by the fitted encoder itself, from the categories it knows."""
    from category_encoders import TargetEncoder
    from sklearn.preprocessing import FunctionTransformer

    def passthrough(transformer) -> bool:  # the remainder: "passthrough" or an identity
        return (isinstance(transformer, str) and transformer in ("drop", "passthrough")) or (
            type(transformer) is FunctionTransformer and transformer.func is None
        )

    fitted = [(t, cols) for _, t, cols in encode.transformers_ if not passthrough(t)]
    if len(fitted) != 1 or type(fitted[0][0]) is not TargetEncoder:
        return None
    encoder, cols = fitted[0][0], list(fitted[0][1])
    if encoder.cols != cols or encoder.ordinal_encoder is None:
        return None
    known = {
        m["col"]: [c for c in m["mapping"].index if isinstance(c, str)]
        for m in encoder.ordinal_encoder.category_mapping
    }
    if set(known) != set(cols):
        return None
    longest = max(len(v) for v in known.values()) + 1
    probe = pd.DataFrame({c: [*known[c], *[_UNKNOWN] * (longest - len(known[c]))] for c in cols})
    encoded = encoder.transform(probe)
    if list(encoded.columns) != cols:
        return None
    values = {c: encoded[c].to_numpy(dtype=np.float64).tolist() for c in cols}
    tables = {c: dict(zip(known[c], values[c][: len(known[c])], strict=True)) for c in cols}
    return tables, {c: values[c][-1] for c in cols}


def compile_pipeline(
    pipeline,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
) -> FastPipeline | None:
    """`build`, accepted only if it prices probe listings as the pipeline does (one warning
    line when not)."""
    try:
        fast = build(pipeline)
        if fast is None:
            logger.warning(
                "no fast path for this pipeline's shape or regressor; predicting with the pipeline"
            )
            return None
        expected = pipeline_prices(pipeline, known_categories, training_ranges)
        accepted = agrees(fast, expected, known_categories, training_ranges)
    except Exception as exc:  # an unexpected shape of a fitted object: the pipeline still works
        logger.warning("no fast path for this pipeline (%r); predicting with the pipeline", exc)
        return None
    return fast if accepted else None


def pipeline_prices(
    pipeline,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
) -> np.ndarray:
    """The pipeline's prices of the probe listings."""
    with threadpool_limits(1):  # OpenMP teams per tree: slow on busy cores
        return np.asarray(pipeline.predict(probe_listings(known_categories, training_ranges)))


def agrees(
    fast: FastPipeline,
    expected: np.ndarray,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
) -> bool:
    """Whether `fast` prices the probe listings as `expected` (one warning line when not). The
    probe goes through in chunks of 1 row, of PROBE_CHUNK_ROWS and of the rest."""
    columns = _columns(probe_listings(known_categories, training_ranges))
    rows = len(expected)
    cuts = [0, 1, *range(1 + PROBE_CHUNK_ROWS, rows // 2, PROBE_CHUNK_ROWS), rows]
    got = np.concatenate(
        [
            fast.predict_columns({k: v[start:stop] for k, v in columns.items()})
            for start, stop in itertools.pairwise(cuts)
        ]
    )
    if not np.allclose(got, expected, rtol=RELATIVE_TOLERANCE, atol=0.0):
        worst = float(np.max(np.abs(got - expected) / np.abs(expected)))
        logger.warning("fast path disagrees with the pipeline (relative %.3g); not used", worst)
        return False
    return True


def save(fast: FastPipeline, expected: np.ndarray, folder: Path) -> None:
    """The fast form (savable) and the pipeline's prices of the probe listings, into `folder`."""
    if not fast.savable:
        raise ValueError("this fast path has parts of scikit-learn's: it cannot be saved")
    fast.regressor.save(folder)
    index = {
        "layout": fast.layout,
        "encodings": fast.encodings,
        "unknown_encoding": fast.unknown_encoding,
        "inverse_exp": fast.inverse_exp,
        "probe_prices": np.asarray(expected, dtype=np.float64).tolist(),
    }
    (folder / FAST_INDEX).write_text(json.dumps(index))


def load(
    folder: Path,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
) -> FastPipeline | None:
    """The fast form `save` wrote, if it prices the probe listings as the pipeline did."""
    index = json.loads((folder / FAST_INDEX).read_text())
    fast = FastPipeline(
        tuple(index["layout"]),
        index["encodings"],
        index["unknown_encoding"],
        CompiledRegressor.load(folder),
        index["inverse_exp"],
        None,
    )
    expected = np.asarray(index["probe_prices"], dtype=np.float64)
    return fast if agrees(fast, expected, known_categories, training_ranges) else None


def probe_listings(
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
) -> pd.DataFrame:
    """Listings spread over the known categories and the training ranges (unknown ones too)."""
    rng, rows = np.random.default_rng(0), PROBE_ROWS
    frame: dict[str, Any] = {}
    for name in CATEGORICAL_NAMES:
        choices = [*known_categories[name], _UNKNOWN]
        frame[name] = [choices[i % len(choices)] for i in rng.permutation(rows)]
    for name in NUMERIC_NAMES:
        feature = NUMERIC_BY_NAME[name]
        values = rng.uniform(*training_ranges.get(name, (feature.minimum, feature.maximum)), rows)
        frame[name] = np.round(values) if feature.integral else values
    return pd.DataFrame(frame)[list(FEATURE_NAMES)]
