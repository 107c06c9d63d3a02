"""Schema checks and cleaning rules for raw listings, with an account of every row touched.

Rules run in a fixed order; a row dropped by one rule is counted under that rule only, so the
counts of a split add up: rows_read == rows_kept + sum(dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pyfunc.errors import UserError
from pyfunc.schema import (
    CATEGORICAL_NAMES,
    FEATURE_NAMES,
    NUMERIC_BY_NAME,
    NUMERIC_FEATURES,
    TARGET,
    normalize_category,
)

COLUMNS = (*FEATURE_NAMES, TARGET.name)
NUMERIC_COLUMNS = (*(f.name for f in NUMERIC_FEATURES), TARGET.name)
EXAMPLES_SHOWN = 3


class DataError(UserError):
    """The data cannot be used as it is: a column is missing, has the wrong type, or is empty."""


@dataclass
class CleaningReport:
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)


def check_schema(raw: pd.DataFrame, where: str) -> pd.DataFrame:
    """The schema's columns with numeric dtypes, or DataError naming the problem and `where`."""
    if raw.empty:
        raise DataError(f"{where}: no rows")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}; "
                        f"found: {', '.join(map(str, raw.columns))}")
    frame = raw[list(COLUMNS)].copy()
    for name in NUMERIC_COLUMNS:
        frame[name] = _numeric(frame[name], name, where)
    for name in CATEGORICAL_NAMES:
        _require_text(frame[name], name, where)
    return frame


def _numeric(column: pd.Series, name: str, where: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(column):
        raise DataError(f"{where}: column {name} must be numeric, found booleans")
    if pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    converted = pd.to_numeric(column, errors="coerce")
    bad = column[converted.isna() & column.notna()]
    if len(bad):
        examples = ", ".join(f"{v!r} (row {i})" for i, v in bad.head(EXAMPLES_SHOWN).items())
        raise DataError(f"{where}: column {name} must be numeric; found {examples}"
                        + (f" and {len(bad) - EXAMPLES_SHOWN} more" if len(bad) > EXAMPLES_SHOWN
                           else ""))
    return converted.astype("float64")


def _require_text(column: pd.Series, name: str, where: str) -> None:
    bad = column[column.notna() & ~column.map(lambda v: isinstance(v, str))]
    if len(bad):
        examples = ", ".join(f"{v!r} (row {i})" for i, v in bad.head(EXAMPLES_SHOWN).items())
        raise DataError(f"{where}: column {name} must hold text; found {examples}")


def _missing(frame: pd.DataFrame) -> pd.Series:
    return frame[list(COLUMNS)].isna().any(axis=1)


def _out_of_bounds(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    bounds = TARGET if name == TARGET.name else NUMERIC_BY_NAME[name]
    return lambda frame: ~frame[name].between(bounds.minimum, bounds.maximum)


def _duplicate(frame: pd.DataFrame) -> pd.Series:
    return frame.duplicated(keep="first")


BOUNDS_RULES: tuple[tuple[str, Callable[[pd.DataFrame], pd.Series]], ...] = tuple(
    (f"{name}_out_of_bounds", _out_of_bounds(name))
    for name in (TARGET.name, *(f.name for f in NUMERIC_FEATURES))
)


def _respell_categories(frame: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    for name in CATEGORICAL_NAMES:
        respelled = frame[name].map(normalize_category)
        changed = int((respelled != frame[name]).sum())
        if changed:
            report.repaired[f"{name}_respelled"] = changed
        frame[name] = respelled
    return frame


def _unswap_coordinates(frame: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    """Latitude and longitude given the wrong way round are swapped back."""
    lat, lon = NUMERIC_BY_NAME["latitude"], NUMERIC_BY_NAME["longitude"]
    swapped = (frame["latitude"].between(lon.minimum, lon.maximum)
               & frame["longitude"].between(lat.minimum, lat.maximum))
    if swapped.any():
        report.repaired["coordinates_swapped"] = int(swapped.sum())
        frame.loc[swapped, ["latitude", "longitude"]] = (
            frame.loc[swapped, ["longitude", "latitude"]].to_numpy())
    return frame


def clean(
    frame: pd.DataFrame,
    known_categories: dict[str, list[str]] | None = None,
) -> tuple[pd.DataFrame, CleaningReport]:
    """Repair what can be repaired, drop what cannot, and count both by reason.

    With `known_categories` (the training split's), rows of a category the model cannot
    know are dropped and counted too (used for the test split).
    """
    report = CleaningReport(rows_read=len(frame))
    frame = frame.reset_index(drop=True)
    frame = _drop(frame, "missing_value", _missing, report)
    frame = _respell_categories(frame, report)
    frame = _unswap_coordinates(frame, report)
    for reason, rule in BOUNDS_RULES:
        frame = _drop(frame, reason, rule, report)
    frame = _drop(frame, "duplicate", _duplicate, report)
    for name, known in (known_categories or {}).items():
        frame = _drop(frame, f"{name}_unseen_in_train", lambda f, n=name, k=known: ~f[n].isin(k),
                      report)
    usable_over_total = int((frame["net_usable_area"] > frame["net_area"]).sum())
    if usable_over_total:
        report.flagged["usable_area_exceeds_total_area"] = usable_over_total
    report.rows_kept = len(frame)
    return frame.reset_index(drop=True), report


def _drop(frame: pd.DataFrame, reason: str, rule, report: CleaningReport) -> pd.DataFrame:
    bad = np.asarray(rule(frame), dtype=bool)
    if bad.any():
        report.dropped[reason] = int(bad.sum())
    return frame.loc[~bad]
