"""A cheap, column-wise check of the shape and JSON types of a scoring request.

Its share of the validation contract (`pyfunc.contract`, which also words its messages): the
model server validates values (bounds, known sectors); the gateway refuses what it would
otherwise coerce or mangle silently: no format key or several, rows that are not lists or
objects, missing or unknown columns, numbers sent as strings or booleans, strings sent as
numbers, nulls. Every problem names its field and row (0-based, as the model does), e.g.
`net_area must be a number (row 3, got str '0.5')`. The body forwarded upstream is the one
checked here, byte for byte.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import errors
from gateway.errors import GatewayError
from pyfunc import contract
from pyfunc.contract import ROWS_SHOWN_PER_PROBLEM, FieldError, first_names
from pyfunc.schema import CATEGORICAL_NAMES, FEATURE_NAMES, NUMERIC_NAMES

FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
DF_SPLIT, DF_RECORDS, INPUTS, INSTANCES = FORMATS
PARAMS = "params"
LISTING_IDS = "listing_ids"  # the client's id of each row, for POST /outcomes; not forwarded
LISTING_ID_MAX = 128
_KINDS = {
    **{name: ("a string", frozenset({str})) for name in CATEGORICAL_NAMES},
    **{name: ("a number", frozenset({int, float})) for name in NUMERIC_NAMES},
}

Columns = dict[str, Sequence[Any]]


@dataclass(frozen=True)
class Batch:
    """A well-shaped request: its format, row count, the format's value as parsed, and the
    params object if it has one."""

    format: str
    rows: int
    data: Any
    params: dict[str, Any] | None = None
    listing_ids: list[str] | None = None

    def columns(self) -> Columns:
        """The features as columns: what the model server is sent, and the request log."""
        if self.format == DF_SPLIT:
            names, rows = self.data["columns"], self.data["data"]
            transposed = list(zip(*rows, strict=True)) if rows else [() for _ in names]
            return dict(zip(names, transposed, strict=True))
        if isinstance(self.data, dict):
            return {name: self.data[name] for name in FEATURE_NAMES}
        return {name: [record[name] for record in self.data] for name in FEATURE_NAMES}


def invalid(problems: list[FieldError]) -> GatewayError:
    """400 INVALID_FEATURES with the contract's summary line and `errors` list."""
    return GatewayError(
        errors.INVALID_FEATURES, contract.summary(problems), [p.as_dict() for p in problems]
    )


def _fail(field: str, row: int | None, message: str) -> GatewayError:
    return invalid([FieldError(field, row, message)])


def validate_payload(payload: object) -> Batch:
    """Check the request's shape and types; raise GatewayError(INVALID_FEATURES) or return.

    The common case costs one pass per column and allocates nothing that outlives it (no
    garbage-collector work even for 10,000 rows); the columns are only built to describe an
    error, or later for the request log.
    """
    if not isinstance(payload, dict):
        raise _fail(
            "body", None, f"the body must be a JSON object with one of: {', '.join(FORMATS)}"
        )
    fmt = _format_key(payload)
    if not isinstance(payload.get(PARAMS, {}), dict):
        raise _fail(PARAMS, None, 'params must be an object, e.g. {"on_unknown_category": "flag"}')
    data = payload[fmt]
    if fmt == DF_SPLIT:
        rows = _check_split(data)
    elif fmt == INPUTS and isinstance(data, dict):
        rows = _check_columnar(data)
    else:
        rows = _check_records(data, fmt)
    if rows == 0:
        raise _fail("rows", None, contract.NO_ROWS)
    listing_ids = payload.get(LISTING_IDS)
    if LISTING_IDS in payload:  # null too is refused
        _check_listing_ids(listing_ids, rows)
    return Batch(fmt, rows, data, payload.get(PARAMS), listing_ids)


def _check_listing_ids(listing_ids: object, rows: int) -> None:
    """One string id per row, of 1 to LISTING_ID_MAX characters."""
    if not isinstance(listing_ids, list) or len(listing_ids) != rows:
        got = f"{len(listing_ids)} ids" if isinstance(listing_ids, list) else "no list"
        raise _fail(
            LISTING_IDS,
            None,
            f"listing_ids must be a list of {rows} strings, one per row; got {got}",
        )
    for row, listing_id in enumerate(listing_ids):
        if not isinstance(listing_id, str) or not 1 <= len(listing_id) <= LISTING_ID_MAX:
            raise _fail(
                LISTING_IDS,
                row,
                f"listing_ids must be strings of 1 to {LISTING_ID_MAX} characters (row {row}, "
                f"got {type(listing_id).__name__})",
            )


def _format_key(payload: dict) -> str:
    allowed = ", ".join(FORMATS)
    unknown, hidden = first_names([k for k in payload if k not in (*FORMATS, PARAMS, LISTING_IDS)])
    if unknown:
        more = f" and {hidden} more" if hidden else ""
        raise _fail(
            unknown[0],
            None,
            f"unknown top-level key(s) {', '.join(map(repr, unknown))}"
            f"{more}; send exactly one of: {allowed} (and optionally "
            "params, listing_ids)",
        )
    present = [k for k in FORMATS if k in payload]
    if len(present) != 1:
        got = f"got {' and '.join(present)}" if present else "got none"
        raise _fail(" | ".join(present) or "body", None, f"send exactly one of: {allowed}; {got}")
    return present[0]


def _check_types(column: Callable[[str], Iterable[Any]]) -> None:
    """Every text feature is a string and every numeric one an int or float (a bool is
    neither): one pass per column, whose values are listed only to describe a problem.
    KeyError when a record lacks a feature."""
    problems: list[FieldError] = []
    for name, (kind, types) in _KINDS.items():
        if set(map(type, column(name))) - types:
            problems += _bad_values(name, list(column(name)), kind, types)
    if problems:
        raise invalid(problems)


def _check_split(data: object) -> int:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("columns"), list)
        or not isinstance(data.get("data"), list)
    ):
        raise _fail(
            DF_SPLIT,
            None,
            'dataframe_split must be an object with "columns" (a list '
            'of names) and "data" (a list of rows)',
        )
    extra, hidden = first_names(sorted(set(data) - {"columns", "data", "index"}))
    if extra:
        more = f" and {hidden} more" if hidden else ""
        raise _fail(
            DF_SPLIT,
            None,
            f"dataframe_split takes columns, data and index, got "
            f"{', '.join(map(repr, extra))}{more}",
        )
    names, rows = data["columns"], data["data"]
    if "index" in data and not (
        isinstance(data["index"], list) and len(data["index"]) == len(rows)
    ):
        raise _fail(
            "index",
            None,
            "dataframe_split.index, when sent, must be a list with one label per row of data",
        )
    if set(map(type, names)) - {str} or len(set(names)) != len(names):
        raise _fail(DF_SPLIT, None, "dataframe_split.columns must be distinct strings")
    if problems := contract.column_problems(names):
        raise invalid(problems)
    _check_rows(rows, list, len(names), DF_SPLIT)
    where = {name: i for i, name in enumerate(names)}
    _check_types(lambda name: map(operator.itemgetter(where[name]), rows))
    return len(rows)


def _check_rows(rows: list, kind: type, width: int, fmt: str) -> None:
    """Every row is a `kind` (and, for lists, of `width` values)."""
    what = "a list of values" if kind is list else "an object of features"
    if set(map(type, rows)) - {kind}:
        row = next(i for i, r in enumerate(rows) if type(r) is not kind)
        got = type(rows[row]).__name__
        raise _fail(fmt, row, f"{fmt} row {row} must be {what}, got {got}")
    if kind is list and set(map(len, rows)) - {width}:
        row = next(i for i, r in enumerate(rows) if len(r) != width)
        raise _fail(fmt, row, f"{fmt} row {row} has {len(rows[row])} values for {width} columns")


def _check_columnar(data: dict) -> int:
    if problems := contract.column_problems(list(data)):
        raise invalid(problems)
    for name in FEATURE_NAMES:
        if not isinstance(data[name], list):
            raise _fail(
                name,
                None,
                f"inputs.{name} must be a list of values, one per row, got "
                f"{type(data[name]).__name__}",
            )
    lengths = {name: len(data[name]) for name in FEATURE_NAMES}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{n} has {k}" for n, k in lengths.items())
        raise _fail(INPUTS, None, f"all columns must have the same length ({shown})")
    _check_types(data.__getitem__)
    return lengths[FEATURE_NAMES[0]]


def _check_records(data: object, fmt: str) -> int:
    if not isinstance(data, list):
        raise _fail(
            fmt, None, f"{fmt} must be a list of objects (one per row), got {type(data).__name__}"
        )
    _check_rows(data, dict, len(FEATURE_NAMES), fmt)
    if set(map(len, data)) - {len(FEATURE_NAMES)}:
        raise _record_keys_error(data)
    try:
        _check_types(lambda name: map(operator.itemgetter(name), data))
    except KeyError:
        raise _record_keys_error(data) from None
    return len(data)


def _record_keys_error(records: list[dict]) -> GatewayError:
    """Name the missing and unknown keys of the first rows that have them."""
    problems: list[FieldError] = []
    for row, record in enumerate(records):
        problems += contract.column_problems(list(record), row)
        if len(problems) >= ROWS_SHOWN_PER_PROBLEM:
            break
    return invalid(problems[:ROWS_SHOWN_PER_PROBLEM])


def _bad_values(
    name: str, values: Sequence[Any], kind: str, types: frozenset[type]
) -> list[FieldError]:
    bad = [row for row, value in enumerate(values) if type(value) not in types]
    return contract.errors_for_rows(
        name,
        bad,
        lambda row: (
            contract.null(name, row)
            if values[row] is None
            else contract.wrong_type(name, kind, row, values[row])
        ),
    )
