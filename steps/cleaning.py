"""Schema checks and cleaning rules for raw listings, with an account of every row touched.

Rules run in a fixed order; a row dropped by one rule is counted under that rule only, so the
counts of a split add up: rows_read == rows_kept + sum(dropped). The bounds, the whole numbers
of rooms and the wording of schema errors are the validation contract's (`pyfunc.contract`).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from config.errors import UserError
from pyfunc import contract
from pyfunc.contract import NOT_WHOLE, OUT_OF_BOUNDS, FieldError, fractional, outside_bounds
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
    """The schema's columns with numeric dtypes, or DataError naming the problems and `where`."""
    if raw.empty:
        raise DataError(f"{where}: no rows")
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        _refuse(
            where,
            [FieldError(c, None, contract.required_column(c)) for c in missing],
            f"; found: {', '.join(map(str, raw.columns))}",
        )
    frame = raw[list(COLUMNS)].copy()
    for name in NUMERIC_COLUMNS:
        frame[name] = _numeric(frame[name], name, where)
    for name in CATEGORICAL_NAMES:
        text = frame[name].map(lambda v: isinstance(v, str))
        _refuse_rows(where, name, "a string", frame[name], frame[name].notna() & ~text)
    return frame


def _refuse(where: str, errors: list[FieldError], tail: str = "") -> None:
    raise DataError(f"{where}: {contract.summary(errors)}{tail}")


def _refuse_rows(where: str, name: str, kind: str, column: pd.Series, bad: pd.Series) -> None:
    rows, values = np.flatnonzero(bad.to_numpy(dtype=bool)), column.to_numpy(dtype=object)
    if len(rows):
        _refuse(
            where,
            contract.errors_for_rows(
                name, rows.tolist(), lambda r: contract.wrong_type(name, kind, r, values[r])
            ),
        )


def _numeric(column: pd.Series, name: str, where: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(column):
        _refuse_rows(where, name, "a number", column, column.notna())
    if pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    converted = pd.to_numeric(column, errors="coerce")
    _refuse_rows(where, name, "a number", column, converted.isna() & column.notna())
    return converted.astype("float64")


# The contract's value rules, each dropping rows under f"{column}_{rule}".
VALUE_RULES: tuple[tuple[str, Callable[[pd.DataFrame], pd.Series]], ...] = (
    *(
        (f"{f.name}_{OUT_OF_BOUNDS}", lambda frame, f=f: outside_bounds(f, frame[f.name]))
        for f in (TARGET, *NUMERIC_FEATURES)
    ),
    *(
        (f"{f.name}_{NOT_WHOLE}", lambda frame, f=f: fractional(f, frame[f.name]))
        for f in NUMERIC_FEATURES
        if f.integral
    ),
)


def _respell_categories(frame: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    for name in CATEGORICAL_NAMES:
        respelled = frame[name].map(normalize_category)
        if changed := int((respelled != frame[name]).sum()):
            report.repaired[f"{name}_respelled"] = changed
        frame[name] = respelled
    return frame


def _unswap_coordinates(frame: pd.DataFrame, report: CleaningReport) -> pd.DataFrame:
    lat, lon = NUMERIC_BY_NAME["latitude"], NUMERIC_BY_NAME["longitude"]
    swapped = frame["latitude"].between(lon.minimum, lon.maximum)
    swapped &= frame["longitude"].between(lat.minimum, lat.maximum)
    if swapped.any():
        report.repaired["coordinates_swapped"] = int(swapped.sum())
        place = ["latitude", "longitude"]
        frame.loc[swapped, place] = frame.loc[swapped, place[::-1]].to_numpy()
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
    frame = _drop(frame, "missing_value", lambda f: f[list(COLUMNS)].isna().any(axis=1), report)
    frame = _respell_categories(frame, report)
    frame = _unswap_coordinates(frame, report)
    for reason, rule in VALUE_RULES:
        frame = _drop(frame, reason, rule, report)
    frame = _drop(frame, "duplicate", pd.DataFrame.duplicated, report)
    for name, known in (known_categories or {}).items():
        frame = _drop(
            frame, f"{name}_unseen_in_train", lambda f, n=name, k=known: ~f[n].isin(k), report
        )
    # Kept, priced with a flag: a value not reported, a usable area over a reported total area.
    flags = {f"{f.name}_unreported": f.is_unreported(frame[f.name]) for f in NUMERIC_FEATURES}
    over = (frame["net_usable_area"] > frame["net_area"]) & ~flags["net_area_unreported"]
    flags["usable_area_exceeds_total_area"] = over
    report.flagged |= {reason: int(rows.sum()) for reason, rows in flags.items() if rows.any()}
    report.rows_kept = len(frame)
    return frame.reset_index(drop=True), report


def _drop(frame: pd.DataFrame, reason: str, rule, report: CleaningReport) -> pd.DataFrame:
    bad = np.asarray(rule(frame), dtype=bool)
    if bad.any():
        report.dropped[reason] = int(bad.sum())
    return frame.loc[~bad]
