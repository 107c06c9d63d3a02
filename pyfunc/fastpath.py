"""The served model's hot path: the same numbers as the fitted pipeline, without its per-call cost.

For one row, the fitted pipeline spends milliseconds in pandas and category_encoders, and
HistGradientBoosting starts an OpenMP team once per tree (hundreds of trees): slow, and
thread-hungry when the cores are busy. Here the same fitted objects are read once, at load:

- `check` validates the common, clean request with numpy in one pass per column and hands
  anything else to `pyfunc.validation.validate`, which stays the only source of error messages;
- `FastPipeline` computes the engineered feature inline, target-encodes with a dict built from
  the fitted encoder itself, and evaluates the trees either all at once with numpy (small
  batches) or with scikit-learn's own tree predictor, on one thread unless OMP_NUM_THREADS
  asks for more (large batches).

`compile_pipeline` refuses (returns None) any pipeline whose shape it does not know, and any
whose fast predictions differ from `pipeline.predict` on probe rows: the model then falls back
to the pipeline. tests/unit/test_fast_path.py checks the equality on generated listings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

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
from pyfunc.validation import ValidatedInput, joined_flags, outside_training_range

logger = logging.getLogger(__name__)

# Below this many rows x trees, all trees are walked at once with numpy (one pass per depth
# level); above it, scikit-learn's compiled predictor is cheaper.
VECTORIZED_MAX_CELLS = 25_000
# Below this many rows, the compiled predictor always runs on one thread: starting an OpenMP
# team per tree costs more than it saves (above it, see `_large_batch_threads`).
PARALLEL_MIN_ROWS = 2_000
PROBE_ROWS = 300
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
        return pd.DataFrame({n: (self.columns[n] if n in NUMERIC_BY_NAME
                                 else self.columns[n].tolist()) for n in FEATURE_NAMES})


def _columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    columns = {n: frame[n].to_numpy(dtype="float64") for n in NUMERIC_NAMES}
    return columns | {n: frame[n].to_numpy(dtype=object) for n in CATEGORICAL_NAMES}


def check(frame: pd.DataFrame, known_categories: Mapping[str, Sequence[str]],
          training_ranges: Mapping[str, tuple[float, float]], on_unknown_category: str = "reject",
          known_sets: Mapping[str, frozenset[str]] | None = None) -> CheckedInput | None:
    """The listings if they are clean, exactly as `validate` would accept and flag them;
    None when anything is off, so that `validate` says what (it is the only one that does)."""
    if on_unknown_category not in UNKNOWN_CATEGORY_POLICIES or frame.empty:
        return None
    names = list(frame.columns)
    if len(names) != len(FEATURE_NAMES) or set(names) != _FEATURE_SET:
        return None
    columns: dict[str, np.ndarray] = {}
    for name in NUMERIC_NAMES:
        values = _clean_numbers(frame[name], name)
        if values is None:
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
    flagged += outside_training_range(columns, training_ranges)
    return CheckedInput(columns, joined_flags(len(frame), flagged))


def _clean_numbers(column: pd.Series, name: str) -> np.ndarray | None:
    """float64 values if the column is numeric and every value passes the contract's rules."""
    if column.dtype.kind not in "iuf":  # not bool, object, complex...: `validate` decides
        return None
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    feature = NUMERIC_BY_NAME[name]
    ok = np.isfinite(values).all() and not outside_bounds(feature, values).any() \
        and not (feature.integral and fractional(feature, values).any())
    return values if ok else None


def _clean_categories(column: pd.Series,
                      known: frozenset[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalized strings and a mask of unknown ones; None if a value is not a string."""
    raw = column.to_numpy(dtype=object)
    normalized = [_normalize(v) if isinstance(v, str) else None for v in raw]
    if None in normalized:
        return None
    unknown = np.fromiter((v not in known for v in normalized), dtype=bool, count=len(raw))
    return np.array(normalized, dtype=object), unknown


@dataclass(frozen=True)
class Trees:
    """Every tree of a fitted HistGradientBoostingRegressor (squared error, no categorical
    splits), flattened into arrays so that all trees advance one depth level per numpy pass."""

    feature: np.ndarray       # per node; leaves point at feature 0
    threshold: np.ndarray     # go left when value <= threshold
    children: np.ndarray      # 2 * node -> left, 2 * node + 1 -> right; a leaf is its own child
    missing_right: np.ndarray  # where a NaN goes
    value: np.ndarray         # leaf values
    roots: np.ndarray
    depth: int
    baseline: float
    predictors: tuple         # scikit-learn's own, for large batches
    n_threads: int

    @classmethod
    def from_estimator(cls, estimator) -> Trees | None:
        """The estimator's trees, or None when it is not a model these arrays can express.

        Reads scikit-learn's fitted `_predictors` and `_baseline_prediction` (private, stable
        since 0.21); `compile_pipeline` refuses the result unless it prices as the pipeline."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        if type(estimator) is not HistGradientBoostingRegressor \
                or estimator.loss != "squared_error" \
                or getattr(estimator, "n_trees_per_iteration_", 0) != 1 \
                or getattr(estimator, "is_categorical_", None) is not None \
                or hasattr(estimator, "feature_names_in_"):
            return None
        predictors = tuple(p for (p,) in estimator._predictors)
        tables = [p.nodes for p in predictors]
        if any(t["is_categorical"].any() for t in tables):
            return None
        sizes = np.array([len(t) for t in tables])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        nodes = np.concatenate(tables)
        shift = np.repeat(offsets, sizes)
        own = np.arange(len(nodes))
        leaf = nodes["is_leaf"].astype(bool)
        left = np.where(leaf, own, nodes["left"].astype(np.intp) + shift)
        right = np.where(leaf, own, nodes["right"].astype(np.intp) + shift)
        return cls(
            feature=np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp),
            threshold=nodes["num_threshold"].astype(np.float64),
            children=np.column_stack([left, right]).ravel(),
            missing_right=~nodes["missing_go_to_left"].astype(bool),
            value=nodes["value"].astype(np.float64),
            roots=offsets.astype(np.intp),
            depth=int(nodes["depth"].max()),
            baseline=float(np.asarray(estimator._baseline_prediction).ravel()[0]),
            predictors=predictors,
            n_threads=_large_batch_threads(),
        )

    def raw_predict(self, matrix: np.ndarray) -> np.ndarray:
        """baseline + the leaf value of every tree, summed tree after tree as scikit-learn does."""
        if matrix.shape[0] * len(self.roots) <= VECTORIZED_MAX_CELLS:
            return self._walk_all(matrix)
        return self._compiled(matrix)

    def _walk_all(self, matrix: np.ndarray) -> np.ndarray:
        rows, width = matrix.shape
        flat = matrix.ravel()
        row_start = (np.arange(rows, dtype=np.intp) * width)[:, None]
        node = np.broadcast_to(self.roots, (rows, len(self.roots))).copy()
        has_nan = bool(np.isnan(flat).any())
        for _ in range(self.depth):
            values = flat[row_start + self.feature[node]]
            right = ~(values <= self.threshold[node])
            if has_nan:
                right = np.where(np.isnan(values), self.missing_right[node], right)
            node = self.children[2 * node + right]
        leaves = np.empty((rows, len(self.roots) + 1))
        leaves[:, 0] = self.baseline
        leaves[:, 1:] = self.value[node]
        return np.cumsum(leaves, axis=1)[:, -1]  # a running sum: same order, same rounding

    def _compiled(self, matrix: np.ndarray) -> np.ndarray:
        threads = 1 if matrix.shape[0] < PARALLEL_MIN_ROWS else self.n_threads
        no_categories = np.zeros((0, 8), dtype=np.uint32)
        feature_map = np.zeros(matrix.shape[1], dtype=np.uint32)
        raw = np.zeros(matrix.shape[0])
        raw += self.baseline
        for predictor in self.predictors:
            raw += predictor.predict(matrix, no_categories, feature_map, threads)
        return raw


def _large_batch_threads() -> int:
    """OpenMP threads for large batches: OMP_NUM_THREADS (capped at the usable cores), else 1.

    Measured on 2 busy cores, a 10,000-row batch took 0.24 s on one thread and 4.2 s on two
    (each of the hundreds of trees waits for a thread that another process has descheduled);
    concurrent requests use the cores anyway.
    """
    requested = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if not requested.isdigit():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, int(requested)))


@dataclass(frozen=True)
class FastPipeline:
    """The fitted pipeline's arithmetic on numpy columns; `predict` equals `pipeline.predict`."""

    layout: tuple[str, ...]                 # the regressor's input columns, in order
    encodings: Mapping[str, Mapping[str, float]]
    unknown_encoding: Mapping[str, float]
    regressor: object
    trees: Trees | None
    inverse_exp: bool
    target_transformer: object | None

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
        if self.trees is not None:
            predicted = self.trees.raw_predict(matrix)
        else:
            predicted = np.asarray(self.regressor.predict(matrix), dtype=np.float64).ravel()
        if self.inverse_exp:
            return np.exp(predicted)
        if self.target_transformer is not None:
            return np.asarray(self.target_transformer.inverse_transform(
                predicted.reshape(-1, 1))).ravel()
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
            isinstance(features, FunctionTransformer) and features.func is add_engineered_features
            and features.kw_args is None and ENGINEERED_FEATURES == ("km_to_business_district",)):
        return None
    if not isinstance(encode, ColumnTransformer):
        return None
    encodings = _encodings(encode)
    if encodings is None:
        return None
    layout = tuple(str(n) for n in encode.get_feature_names_out())
    allowed = set(FEATURE_NAMES) | (set(ENGINEERED_FEATURES) if features is not None else set())
    if set(layout) - allowed or not set(encodings[0]) <= set(layout):
        return None
    inverse_exp, target_transformer, regressor = False, None, model
    if isinstance(model, TransformedTargetRegressor):
        regressor = model.regressor_
        if model.func is np.log and model.inverse_func is np.exp:
            inverse_exp = True
        else:
            target_transformer = model.transformer_
    if hasattr(regressor, "feature_names_in_"):
        return None
    return FastPipeline(layout, encodings[0], encodings[1], regressor,
                        Trees.from_estimator(regressor), inverse_exp, target_transformer)


def _encodings(encode) -> tuple[dict[str, dict[str, float]], dict[str, float]] | None:
    """Per encoded column, category -> the fitted encoder's output, and its unknown value.

    The table is made by the fitted encoder itself, from the categories it knows."""
    from category_encoders import TargetEncoder
    from sklearn.preprocessing import FunctionTransformer

    def passthrough(transformer) -> bool:  # the remainder: "passthrough" or an identity
        return (isinstance(transformer, str) and transformer in ("drop", "passthrough")) or (
            type(transformer) is FunctionTransformer and transformer.func is None)

    fitted = [(t, cols) for _, t, cols in encode.transformers_ if not passthrough(t)]
    if len(fitted) != 1 or type(fitted[0][0]) is not TargetEncoder:
        return None
    encoder, cols = fitted[0]
    cols = list(cols)
    if encoder.cols != cols or encoder.ordinal_encoder is None:
        return None
    known = {m["col"]: [c for c in m["mapping"].index if isinstance(c, str)]
             for m in encoder.ordinal_encoder.category_mapping}
    if set(known) != set(cols):
        return None
    longest = max(len(v) for v in known.values()) + 1
    probe = pd.DataFrame({c: [*known[c], *[_UNKNOWN] * (longest - len(known[c]))] for c in cols})
    encoded = encoder.transform(probe)
    if list(encoded.columns) != cols:
        return None
    values = {c: encoded[c].to_numpy(dtype=np.float64).tolist() for c in cols}
    tables = {c: dict(zip(known[c], values[c][:len(known[c])], strict=True)) for c in cols}
    return tables, {c: values[c][-1] for c in cols}


def compile_pipeline(pipeline, known_categories: Mapping[str, Sequence[str]],
                     training_ranges: Mapping[str, tuple[float, float]]) -> FastPipeline | None:
    """`build`, accepted only if it prices probe listings as the pipeline does.

    The probe goes through in chunks of 1, 59 and 240 rows: both ways of walking the trees."""
    try:
        fast = build(pipeline)
        if fast is None:
            logger.info("no fast path for this pipeline's shape; predicting with the pipeline")
            return None
        probe = probe_listings(known_categories, training_ranges)
        with threadpool_limits(1):  # see `_large_batch_threads`
            expected = pipeline.predict(probe)
        columns = _columns(probe)
        got = np.concatenate([fast.predict_columns({k: v[start:stop] for k, v in columns.items()})
                              for start, stop in ((0, 1), (1, 60), (60, len(probe)))])
    except Exception as exc:  # an unexpected shape of a fitted object: the pipeline still works
        logger.warning("no fast path for this pipeline (%r); predicting with the pipeline", exc)
        return None
    if not np.allclose(got, expected, rtol=RELATIVE_TOLERANCE, atol=0.0):
        worst = float(np.max(np.abs(got - expected) / np.abs(expected)))
        logger.warning("fast path disagrees with the pipeline (relative %.3g); not used", worst)
        return None
    return fast


def probe_listings(known_categories: Mapping[str, Sequence[str]],
                   training_ranges: Mapping[str, tuple[float, float]],
                   rows: int = PROBE_ROWS, seed: int = 0) -> pd.DataFrame:
    """Listings spread over the known categories and the training ranges (unknown ones too)."""
    rng = np.random.default_rng(seed)
    frame = {}
    for name in CATEGORICAL_NAMES:
        choices = [*known_categories[name], _UNKNOWN]
        frame[name] = [choices[i % len(choices)] for i in rng.permutation(rows)]
    for name in NUMERIC_NAMES:
        feature = NUMERIC_BY_NAME[name]
        low, high = training_ranges.get(name, (feature.minimum, feature.maximum))
        values = rng.uniform(low, high, rows)
        frame[name] = np.round(values) if feature.integral else values
    return pd.DataFrame(frame)[list(FEATURE_NAMES)]
