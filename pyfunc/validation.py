"""The model's validation of listings: values, bounds and categories (see `pyfunc.contract`).

Every problem is collected, not only the first, so one answer tells a client everything that
is wrong: which field, which row, what was sent and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pyfunc import contract
from pyfunc.contract import UNKNOWN_CATEGORY_POLICIES, FieldError, ValidationError
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_FEATURES, normalize_category

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ValidatedInput:
    """Model-ready features plus, per row, the features the model has not seen such values of."""

    frame: pd.DataFrame
    flags: list[str]


def validate(
    frame: pd.DataFrame,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
    on_unknown_category: str = "reject",
) -> ValidatedInput:
    """Check columns, types, finiteness, physical bounds and categories; raise or return.

    Categories are normalized (case, accents, spaces). Unknown categories are rejected with
    the list of known values, or kept and flagged when `on_unknown_category` is "flag".
    Values inside the physical bounds but outside `training_ranges`, and "not reported" values
    (`pyfunc.schema`), are flagged, not refused.
    """
    findings = _inspect(frame, known_categories, on_unknown_category, each_row=False)
    if findings.errors:
        raise ValidationError(findings.errors)
    return _accepted(findings, training_ranges)


def validate_each_row(
    frame: pd.DataFrame,
    known_categories: Mapping[str, Sequence[str]],
    training_ranges: Mapping[str, tuple[float, float]],
    on_unknown_category: str = "reject",
) -> tuple[ValidatedInput, dict[int, str]]:
    """Like `validate`, but a bad row does not sink the others: the valid rows (in order), and
    for each invalid row's position the reason it cannot be priced. Raises only when no row
    can be priced: a missing column, or a bad policy."""
    findings = _inspect(frame, known_categories, on_unknown_category, each_row=True)
    if findings.batch_errors:
        raise ValidationError(findings.batch_errors)
    reasons = {row: "; ".join(messages) for row, messages in findings.by_row.items()}
    return _accepted(findings, training_ranges, exclude=list(reasons)), reasons


@dataclass
class _Findings:
    """What `_inspect` saw; when `each_row`, every message about each bad row is kept too, without
    its row number."""

    clean: pd.DataFrame
    each_row: bool
    flagged: list[tuple[str, np.ndarray]] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)
    by_row: dict[int, list[str]] = field(default_factory=dict)
    batch_errors: list[FieldError] = field(default_factory=list)

    def add(self, name: str, mask: np.ndarray, describe: Callable[[int, int | None], str]) -> None:
        """Report the rows of `mask`; `describe(row, shown_row)` words one (shown_row None:
        the message leaves the row out)."""
        rows = np.flatnonzero(mask)
        self.errors += contract.errors_for_rows(name, rows.tolist(), lambda r: describe(r, r))
        for r in rows.tolist() if self.each_row else ():
            self.by_row.setdefault(r, []).append(describe(r, None))

    def refuse_batch(self, errors: list[FieldError]) -> None:
        self.errors += errors
        self.batch_errors += errors


def _inspect(
    frame: pd.DataFrame,
    known_categories: Mapping[str, Sequence[str]],
    on_unknown_category: str,
    each_row: bool,
) -> _Findings:
    findings = _Findings(pd.DataFrame(index=pd.RangeIndex(len(frame))), each_row)
    if on_unknown_category not in UNKNOWN_CATEGORY_POLICIES:
        policies = ("on_unknown_category", UNKNOWN_CATEGORY_POLICIES, on_unknown_category)
        findings.refuse_batch([FieldError(policies[0], None, contract.not_one_of(*policies))])
        return findings
    if frame.empty:
        findings.refuse_batch([FieldError("rows", None, contract.NO_ROWS)])
        return findings
    findings.refuse_batch(contract.column_problems(list(frame.columns)))
    for feature in (f for f in NUMERIC_FEATURES if f.name in frame.columns):
        findings.clean[feature.name] = _numeric_column(frame[feature.name], feature, findings)
    for name in (n for n in CATEGORICAL_NAMES if n in frame.columns):
        findings.clean[name] = _categorical_column(
            frame[name], name, known_categories[name], on_unknown_category, findings
        )
    return findings


def _accepted(
    findings: _Findings,
    training_ranges: Mapping[str, tuple[float, float]],
    exclude: Sequence[int] = (),
) -> ValidatedInput:
    clean, flagged = findings.clean, findings.flagged
    if exclude:
        keep = np.setdiff1d(np.arange(len(clean)), exclude)
        clean = clean.iloc[keep].reset_index(drop=True)
        flagged = [(name, mask[keep]) for name, mask in flagged]
    flagged = flagged + unreliable(clean, training_ranges)
    return ValidatedInput(clean[list(FEATURE_NAMES)], joined_flags(len(clean), flagged))


def unreliable(
    columns: Mapping[str, Any] | pd.DataFrame, training_ranges: Mapping[str, tuple[float, float]]
) -> list[tuple[str, np.ndarray]]:
    """Per numeric feature, the mask of values priced with little support: outside the
    feature's training range (if it has one), or its "not reported" value."""
    masks = []
    for feature in NUMERIC_FEATURES:
        values = np.asarray(columns[feature.name])
        low, high = training_ranges.get(feature.name, (-np.inf, np.inf))
        outside = (values < low) | (values > high)
        masks.append((feature.name, outside | feature.is_unreported(values)))
    return masks


def joined_flags(rows: int, flagged: list[tuple[str, np.ndarray]]) -> list[str]:
    """Per row, the names of the features flagged there, joined by commas, in order."""
    flags = [""] * rows
    for name, mask in flagged:
        for row in np.flatnonzero(mask):
            flags[row] = f"{flags[row]},{name}" if flags[row] else name
    return flags


def _as_numbers(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 and a mask of entries that were not numbers (strings, bools, objects)."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_complex_dtype(column):
        return np.full(len(column), np.nan), np.ones(len(column), dtype=bool)
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype="float64", na_value=np.nan), np.zeros(len(column), bool)
    objects = column.to_numpy(dtype=object)
    number = np.array([_is_real_number(v) for v in objects], dtype=bool)
    given = np.array([v is not None for v in objects], dtype=bool)
    values = [_float(v) if ok else np.nan for v, ok in zip(objects, number, strict=True)]
    return np.array(values, dtype="float64"), given & ~number


def _is_real_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return float("inf") if value > 0 else float("-inf")


def _numeric_column(column: pd.Series, feature, findings: _Findings) -> np.ndarray:
    name, raw = feature.name, column.to_numpy(dtype=object)
    values, not_number = _as_numbers(column)
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        outside = finite & contract.outside_bounds(feature, values)
        fractional = finite & ~outside & contract.fractional(feature, values)
    findings.add(name, not_number, lambda r, at: contract.wrong_type(name, "a number", at, raw[r]))
    nan_or_inf = ~not_number & ~finite
    findings.add(name, nan_or_inf, lambda r, at: contract.not_finite(name, at, values[r]))
    findings.add(name, outside, lambda r, at: contract.out_of_bounds(feature, at, values[r]))
    findings.add(name, fractional, lambda r, at: contract.not_whole(feature, at, values[r]))
    return values


def _categorical_column(
    column: pd.Series, name: str, known: Sequence[str], on_unknown: str, findings: _Findings
) -> list[str | None]:
    raw = column.to_numpy(dtype=object)
    not_text = np.array([not _is_text(v) for v in raw], dtype=bool)
    normalized = [
        None if bad else normalize_category(v) for v, bad in zip(raw, not_text, strict=True)
    ]
    known_set = set(known)
    unknown = np.array([v is not None and v not in known_set for v in normalized], dtype=bool)
    null = np.array(
        [v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) for v in raw], dtype=bool
    )
    findings.add(name, null, lambda r, at: contract.null(name, at))
    wrong_type = not_text & ~null
    findings.add(name, wrong_type, lambda r, at: contract.wrong_type(name, "a string", at, raw[r]))
    if on_unknown == "flag":
        findings.flagged.append((name, unknown))
    else:
        findings.add(
            name, unknown, lambda r, at: contract.unknown_category(name, raw[r], at, known_set)
        )
    return normalized


def _is_text(value: object) -> bool:
    """A string that UTF-8 can carry (a lone surrogate cannot)."""
    return isinstance(value, str) and not _SURROGATE.search(value)
