"""The validation contract: who checks what, the error record, its messages, the summary line.

Three layers check a listing against `pyfunc.schema` and speak with one voice:

- the gateway (`gateway/validation.py`): the JSON shape and types of a request (one format key,
  rows as objects or lists, every feature and no other, no nulls); it passes the model's
  refusals on with their `errors` list.
- the model (`pyfunc/validation.py`): values (finite, inside the physical bounds, whole rooms
  and bathrooms, known categories); it flags values outside the training range and "not
  reported" ones. The fast path's pre-check (`pyfunc/fastpath.py`) applies the same rules.
- ingest (`steps/cleaning.py`): refuses a file with wrong columns or types and drops the
  training rows the same bounds refuse, counted by reason (`n_rooms_out_of_bounds`, ...).

Each problem is a `FieldError` (field, 0-based row, message) worded with the templates below;
`summary` sums a refusal up in one line, kept short whatever was sent (ROWS_SHOWN_PER_PROBLEM,
NAMES_SHOWN, CHARS_SHOWN). Imports only the standard library and the schema: the gateway uses
it on its request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

from pyfunc.schema import FEATURE_NAMES, NumericFeature

ROWS_SHOWN_PER_PROBLEM = 5
NAMES_SHOWN = 5
CHARS_SHOWN = 40
UNKNOWN_CATEGORY_POLICIES = ("reject", "flag")
INVALID_ROW_POLICIES = ("reject", "report")
# The value rules of a numeric feature; ingest counts its drops as f"{feature}_{rule}".
OUT_OF_BOUNDS, NOT_WHOLE = "out_of_bounds", "not_whole"
NO_ROWS = "no rows to price"


@dataclass(frozen=True)
class FieldError:
    """One problem: the field (feature, column or parameter), the row if it concerns one row,
    and the message for the client."""

    field: str
    row: int | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ValidationError(ValueError):
    """The input cannot be priced; `errors` names each bad field and row."""

    def __init__(self, errors: Sequence[FieldError]):
        self.errors = list(errors)
        super().__init__(summary(self.errors))


def summary(errors: Sequence[FieldError]) -> str:
    """The one-line account of a refusal: the fields at fault, then every message."""
    fields = sorted({e.field for e in errors})
    return f"Invalid input ({', '.join(fields)}): " + "; ".join(e.message for e in errors)


def outside_bounds(feature: NumericFeature, values):
    """Where values lie outside the feature's physical bounds, other than its "not reported"
    value (NaN does not). Like `fractional`, elementwise on a number, array or pandas column."""
    outside = (values < feature.minimum) | (values > feature.maximum)
    return outside & (values != feature.unreported)


def fractional(feature: NumericFeature, values):
    """Where an integral feature (rooms, bathrooms) has a fractional part: 2.5 rooms.
    Meant for finite values."""
    return (values % 1 != 0) & feature.integral


def cut(text: str) -> str:
    return text if len(text) <= CHARS_SHOWN else text[: CHARS_SHOWN - 3] + "..."


def shown(value: object) -> str:
    """The repr of a value a client sent, cut."""
    return cut(repr(value))


def first_names(names: Sequence[object]) -> tuple[list[str], int]:
    """The first NAMES_SHOWN of `names`, each cut, and how many more there are."""
    return [cut(str(n)) for n in names[:NAMES_SHOWN]], max(0, len(names) - NAMES_SHOWN)


def errors_for_rows(
    field: str, rows: Sequence[int], describe: Callable[[int], str]
) -> list[FieldError]:
    """One error per bad row, capped; the last one says how many more rows share the problem."""
    errors = [FieldError(field, int(r), describe(int(r))) for r in rows[:ROWS_SHOWN_PER_PROBLEM]]
    if len(rows) > len(errors):
        hidden = len(rows) - len(errors)
        errors.append(FieldError(field, None, f"{field}: the same problem in {hidden} more rows"))
    return errors


def _got(row: int | None, got: object) -> str:
    """The end of a message: a template given `row=None` leaves the row out (a per-row reason)."""
    return f"(got {got})" if row is None else f"(row {row}, got {got})"


def required_column(name: str) -> str:
    return f"{name} is a required column"


def column_problems(names: Sequence[object], row: int | None = None) -> list[FieldError]:
    """The features missing from `names` (the columns, or the keys of row `row`) and the names
    that are not features."""
    found = set(names)
    problems = [
        FieldError(n, row, required_column(n) if row is None else f"{n} is missing (row {row})")
        for n in FEATURE_NAMES
        if n not in found
    ]
    unknown, hidden = first_names([n for n in names if n not in FEATURE_NAMES])
    at = "" if row is None else f"row {row}; "
    problems += [
        FieldError(n, row, f"{n!r} is not a feature ({at}expected: {', '.join(FEATURE_NAMES)})")
        for n in unknown
    ]
    if hidden:
        problems.append(FieldError("columns", row, f"{at}{hidden} more columns are not features"))
    return problems


def null(name: str, row: int | None) -> str:
    return f"{name} is missing {_got(row, 'null')}"


def wrong_type(name: str, kind: str, row: int | None, value: object) -> str:
    """`kind` is what was expected: "a number", "a string"."""
    return f"{name} must be {kind} {_got(row, f'{type(value).__name__} {shown(value)}')}"


def not_finite(name: str, row: int | None, value: float) -> str:
    return f"{name} must be a finite number {_got(row, float(value))}"


def out_of_bounds(feature: NumericFeature, row: int | None, value: float) -> str:
    unit = f" {feature.unit}" if feature.unit else ""
    if feature.unreported is not None:
        unit += f", or {feature.unreported:g} if not reported"
    return f"{feature.name} must be from {feature.allowed()}{unit} {_got(row, f'{value:g}')}"


def not_whole(feature: NumericFeature, row: int | None, value: float) -> str:
    return f"{feature.name} must be a whole number {_got(row, f'{value:g}')}"


def unknown_category(name: str, value: object, row: int | None, known: Iterable[str]) -> str:
    at = "" if row is None else f" (row {row})"
    return f"{name} {shown(value)} is unknown{at}; known: {', '.join(sorted(known))}"


def not_one_of(name: str, allowed: Sequence[str], got: object) -> str:
    return f"{name} must be one of {', '.join(allowed)}, got {got!r}"
