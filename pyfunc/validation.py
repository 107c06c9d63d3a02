"""Validation of listings before they reach the model.

Every problem is collected, not only the first, so one answer tells a client everything that
is wrong: which field, which row, what was sent and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from pyfunc.reporting import ROWS_SHOWN_PER_PROBLEM, first_names, shown
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_FEATURES, normalize_category

UNKNOWN_CATEGORY_POLICIES = ("reject", "flag")


@dataclass(frozen=True)
class FieldError:
    field: str
    row: int | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ValidationError(ValueError):
    """The input cannot be priced; `errors` names each bad field and row."""

    def __init__(self, errors: Sequence[FieldError]):
        self.errors = list(errors)
        super().__init__(summarize(self.errors))


@dataclass(frozen=True)
class ValidatedInput:
    """Model-ready features plus, per row, the features the model has not seen such values of."""

    frame: pd.DataFrame
    flags: list[str]


def summarize(errors: Sequence[FieldError]) -> str:
    fields = sorted({e.field for e in errors})
    return f"Invalid input ({', '.join(fields)}): " + "; ".join(e.message for e in errors)


def validate(
    frame: pd.DataFrame,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
    on_unknown_category: str = "reject",
) -> ValidatedInput:
    """Check columns, types, finiteness, physical bounds and categories; raise or return.

    Categories are normalized (case, accents, spaces). Unknown categories are rejected with
    the list of known values, or kept and flagged when `on_unknown_category` is "flag".
    Values inside the physical bounds but outside `training_ranges` are flagged, not refused.
    """
    if on_unknown_category not in UNKNOWN_CATEGORY_POLICIES:
        raise ValidationError([FieldError(
            "on_unknown_category", None,
            f"on_unknown_category must be one of {', '.join(UNKNOWN_CATEGORY_POLICIES)}, "
            f"got {on_unknown_category!r}",
        )])
    if frame.empty:
        raise ValidationError([FieldError("rows", None, "no rows to price")])
    errors = _column_errors(frame)
    clean = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    flags = [[] for _ in range(len(frame))]
    for feature in (f for f in NUMERIC_FEATURES if f.name in frame.columns):
        values, problems = _numeric_column(frame[feature.name], feature)
        clean[feature.name] = values
        errors += problems
    for name in (n for n in CATEGORICAL_NAMES if n in frame.columns):
        values, problems = _categorical_column(frame[name], name, known_categories[name],
                                               on_unknown_category, flags)
        clean[name] = values
        errors += problems
    if errors:
        raise ValidationError(errors)
    _flag_outside_training_range(clean, training_ranges, flags)
    return ValidatedInput(clean[list(FEATURE_NAMES)], [",".join(f) for f in flags])


def _column_errors(frame: pd.DataFrame) -> list[FieldError]:
    missing = [n for n in FEATURE_NAMES if n not in frame.columns]
    unexpected, hidden = first_names([c for c in frame.columns if c not in FEATURE_NAMES])
    errors = [FieldError(n, None, f"{n} is a required column") for n in missing]
    errors += [
        FieldError(c, None, f"{c!r} is not a feature (expected: {', '.join(FEATURE_NAMES)})")
        for c in unexpected
    ]
    if hidden:
        errors.append(FieldError("columns", None, f"{hidden} more columns are not features"))
    return errors


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


def _errors_for_rows(field: str, rows: np.ndarray, describe) -> list[FieldError]:
    """One error per bad row, capped; the last one says how many more rows share the problem."""
    shown = [FieldError(field, int(r), describe(int(r))) for r in rows[:ROWS_SHOWN_PER_PROBLEM]]
    hidden = len(rows) - len(shown)
    if hidden > 0:
        shown.append(FieldError(field, None, f"{field}: the same problem in {hidden} more rows"))
    return shown


def _as_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 and a mask of entries that were not numbers (strings, bools, objects)."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_complex_dtype(column):
        return np.full(len(column), np.nan), np.ones(len(column), dtype=bool)
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype="float64", na_value=np.nan), np.zeros(len(column), bool)
    objects = column.to_numpy(dtype=object)
    not_number = np.array([not (v is None or _is_real_number(v)) for v in objects], dtype=bool)
    values = np.array([np.nan if bad or v is None else _float(v)
                       for v, bad in zip(objects, not_number, strict=True)], dtype="float64")
    return values, not_number


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return float("inf") if value > 0 else float("-inf")


def _numeric_column(column: pd.Series, feature) -> tuple[np.ndarray, list[FieldError]]:
    name, raw = feature.name, column.to_numpy(dtype=object)
    values, not_number = _as_numbers(column)
    not_finite = ~not_number & ~np.isfinite(values)
    with np.errstate(invalid="ignore"):
        out_of_bounds = np.isfinite(values) & (
            (values < feature.minimum) | (values > feature.maximum))
    unit = f" {feature.unit}" if feature.unit else ""
    errors = _errors_for_rows(name, _rows(not_number), lambda r: (
        f"{name} must be a number (row {r}, got {type(raw[r]).__name__} {shown(raw[r])})"))
    errors += _errors_for_rows(name, _rows(not_finite), lambda r: (
        f"{name} must be a finite number (row {r}, got {float(values[r])})"))
    errors += _errors_for_rows(name, _rows(out_of_bounds), lambda r: (
        f"{name} must be from {feature.allowed()}{unit} (row {r}, got {values[r]:g})"))
    return values, errors


def _categorical_column(
    column: pd.Series,
    name: str,
    known: Sequence[str],
    on_unknown: str,
    flags: list[list[str]],
) -> tuple[list[str | None], list[FieldError]]:
    raw = column.to_numpy(dtype=object)
    not_text = np.array([not _is_text(v) for v in raw], dtype=bool)
    normalized = [None if bad else normalize_category(v) for v, bad in zip(raw, not_text,
                                                                           strict=True)]
    known_set = set(known)
    unknown = np.array([v is not None and v not in known_set for v in normalized], dtype=bool)
    errors = _errors_for_rows(name, _rows(not_text), lambda r: (
        f"{name} must be a string (row {r}, got {type(raw[r]).__name__} {shown(raw[r])})"))
    if on_unknown == "flag":
        for r in _rows(unknown):
            flags[r].append(name)
    else:
        allowed = ", ".join(sorted(known_set))
        errors += _errors_for_rows(name, _rows(unknown), lambda r: (
            f"{name} {shown(raw[r])} is unknown (row {r}); known: {allowed}"))
    return normalized, errors


def _is_text(value: object) -> bool:
    """A string that UTF-8 can carry (a lone surrogate cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _flag_outside_training_range(
    clean: pd.DataFrame,
    training_ranges: Mapping[str, tuple[float, float]],
    flags: list[list[str]],
) -> None:
    for name, (low, high) in training_ranges.items():
        values = clean[name].to_numpy()
        for r in _rows((values < low) | (values > high)):
            flags[r].append(name)
