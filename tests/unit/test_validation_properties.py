"""Properties of pyfunc.validation.validate on frames that hypothesis generates.

test_validation.py pins exact messages on hand-written frames; this module checks what must
hold for every frame: valid rows pass unflagged, one corrupted cell is named by its field and
row and nothing else, nothing but ValidationError ever escapes, values are never coerced
silently, and the spelling of a category (case, accents, spaces, width) never matters.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from pyfunc.contract import ROWS_SHOWN_PER_PROBLEM, ValidationError
from pyfunc.schema import (
    CATEGORICAL_NAMES,
    FEATURE_NAMES,
    NUMERIC_BY_NAME,
    NUMERIC_FEATURES,
    NUMERIC_NAMES,
    example_listing,
    normalize_category,
)
from pyfunc.validation import ValidatedInput, validate

KNOWN: dict[str, tuple[str, ...]] = {
    "type": ("casa", "departamento"),
    "sector": ("la reina", "las condes", "lo barnechea", "nunoa", "providencia", "vitacura"),
}
UNKNOWN_SECTORS = ("marte", "san miguel", "la florida")
MAX_ROWS = 8

Columns = dict[str, list[Any]]
Ranges = dict[str, tuple[float, float]]

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Strategies.


@st.composite
def training_ranges(draw: st.DrawFn) -> Ranges:
    """A training range inside the physical bounds of every numeric feature."""
    ranges: Ranges = {}
    for feature in NUMERIC_FEATURES:
        low = draw(numbers_between(feature.minimum, feature.maximum, feature.integral))
        high = draw(numbers_between(low, feature.maximum, feature.integral))
        ranges[feature.name] = (float(low), float(high))
    return ranges


def numbers_between(low: float, high: float, whole: bool = False) -> st.SearchStrategy[float | int]:
    """Floats in [low, high], and the integers there too (clients send both); only whole
    numbers (as integers or floats) when `whole`."""
    integers = st.integers(math.ceil(low), math.floor(high))
    if whole:
        return st.one_of(integers, integers.map(float))
    floats = st.floats(low, high)
    if math.ceil(low) > math.floor(high):
        return floats
    return st.one_of(floats, integers)


@st.composite
def valid_columns(draw: st.DrawFn, ranges: Ranges, min_rows: int = 1) -> Columns:
    """Canonical listings (known categories, numbers inside `ranges`), column by column."""
    rows = draw(st.integers(min_rows, MAX_ROWS))
    columns: Columns = {}
    for name in CATEGORICAL_NAMES:
        columns[name] = draw(st.lists(st.sampled_from(KNOWN[name]), min_size=rows, max_size=rows))
    for name in NUMERIC_NAMES:
        columns[name] = draw(
            st.lists(
                numbers_between(*ranges[name], NUMERIC_BY_NAME[name].integral),
                min_size=rows,
                max_size=rows,
            )
        )
    return columns


@st.composite
def frames(draw: st.DrawFn, columns: Columns) -> pd.DataFrame:
    """`columns` as a DataFrame, in any column order and with any index labels."""
    order = draw(st.permutations(list(columns)))
    frame = pd.DataFrame({name: columns[name] for name in order})
    rows = len(frame)
    frame.index = draw(
        st.one_of(
            st.just(pd.RangeIndex(rows)),
            st.permutations(range(10, 10 + rows)).map(pd.Index),
            st.lists(st.text(max_size=3), min_size=rows, max_size=rows, unique=True).map(pd.Index),
        )
    )
    return frame


def _fullwidth(char: str) -> str:
    return chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char


@st.composite
def spellings(draw: st.DrawFn, canonical: str) -> str:
    """Another way to write `canonical` that normalize_category maps back to it: any case,
    accents or other combining marks, full-width letters, runs of any kind of white space."""
    marks = st.sampled_from(["", "", "\u0301", "\u0303", "\u0308", "\u0327"])
    spaces = st.sampled_from([" ", "  ", "\t", "\u00a0", " \n "])
    pieces = []
    for char in canonical:
        if char == " ":
            pieces.append(draw(spaces))
        else:
            letter = draw(
                st.sampled_from([char, char.upper(), _fullwidth(char), _fullwidth(char.upper())])
            )
            pieces.append(letter + draw(marks))
    padding = st.sampled_from(["", " ", "\t", "\u00a0"])
    spelled = draw(padding) + "".join(pieces) + draw(padding)
    return unicodedata.normalize(draw(st.sampled_from(["NFC", "NFD"])), spelled)


def out_of_bounds(name: str) -> st.SearchStrategy[float | int]:
    """Finite numbers outside the physical bounds of numeric feature `name`, other than its
    "not reported" value."""
    feature = NUMERIC_BY_NAME[name]
    below = st.one_of(
        st.floats(
            max_value=feature.minimum, exclude_max=True, allow_nan=False, allow_infinity=False
        ),
        st.integers(max_value=math.ceil(feature.minimum) - 1),
    ).filter(lambda value: value != feature.unreported)
    above = st.one_of(
        st.floats(
            min_value=feature.maximum, exclude_min=True, allow_nan=False, allow_infinity=False
        ),
        st.integers(min_value=math.floor(feature.maximum) + 1),
    )
    return st.one_of(below, above)


def fractions(name: str) -> st.SearchStrategy[float]:
    """Numbers with a fractional part inside the bounds of an integral feature (2.5 rooms);
    out-of-bounds numbers for the other features."""
    feature = NUMERIC_BY_NAME[name]
    if not feature.integral:
        return out_of_bounds(name)
    return st.floats(feature.minimum, feature.maximum).filter(lambda value: value % 1 != 0)


def unknown_categories(name: str) -> st.SearchStrategy[str]:
    return st.text(max_size=20).filter(lambda text: normalize_category(text) not in KNOWN[name])


NUMERIC_CORRUPTIONS: dict[str, Callable[[str], st.SearchStrategy[Any]]] = {
    "nan": lambda name: st.just(float("nan")),
    "infinity": lambda name: st.sampled_from([float("inf"), float("-inf")]),
    "null": lambda name: st.none(),
    "number-as-string": lambda name: st.one_of(st.floats().map(str), st.integers().map(str)),
    "text": lambda name: st.text(max_size=20),
    "bool": lambda name: st.booleans(),
    "nested": lambda name: st.one_of(
        st.lists(st.floats(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ),
    "out-of-bounds": out_of_bounds,
    "fractional": fractions,
    "integer-beyond-float": lambda name: st.integers(min_value=10**309).flatmap(
        lambda n: st.sampled_from([n, -n])
    ),
}
CATEGORICAL_CORRUPTIONS: dict[str, Callable[[str], st.SearchStrategy[Any]]] = {
    "unknown": unknown_categories,
    "number": lambda name: st.one_of(st.integers(), st.floats()),
    "null": lambda name: st.none(),
    "bool": lambda name: st.booleans(),
    "bytes": lambda name: st.binary(max_size=10),
    "nested": lambda name: st.lists(st.text(max_size=5), max_size=2),
}


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(field, kind, value): a value that must be refused in column `field`."""
    field = draw(st.sampled_from(FEATURE_NAMES))
    table = NUMERIC_CORRUPTIONS if field in NUMERIC_BY_NAME else CATEGORICAL_CORRUPTIONS
    kind = draw(st.sampled_from(sorted(table)))
    return field, kind, draw(table[kind](field))


# Anything at all: what a caller of the pyfunc in Python (batch scoring, Spark) might pass.
# Lone surrogates and complex numbers have their own test below.
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**309),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=6),
    st.decimals(allow_nan=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.datetimes().map(pd.Timestamp),
    st.just(pd.NA),
    st.just(pd.NaT),
    st.sampled_from([np.float32(140.5), np.int64(3), np.bool_(True), np.str_("casa")]),
)


@st.composite
def any_column(draw: st.DrawFn, name: object, rows: int) -> list[Any]:
    """Values for a column named `name`: mostly plausible ones, else anything or a mixture."""
    plausible: st.SearchStrategy[Any] = ANYTHING
    odd: st.SearchStrategy[Any] = ANYTHING
    if name in NUMERIC_BY_NAME:
        feature = NUMERIC_BY_NAME[name]
        plausible = numbers_between(feature.minimum, feature.maximum, feature.integral)
        odd = out_of_bounds(name)
    elif name in KNOWN:
        plausible = st.sampled_from(KNOWN[name]).flatmap(spellings)
        odd = unknown_categories(name)
    cells = draw(
        st.sampled_from(
            [plausible] * 12
            + [odd, st.one_of(plausible, odd), ANYTHING, st.one_of(plausible, ANYTHING)]
        )
    )
    return draw(st.lists(cells, min_size=rows, max_size=rows))


@st.composite
def any_frames(draw: st.DrawFn) -> pd.DataFrame:
    """Frames of 0 to MAX_ROWS rows: the features, or some of them with extra or duplicated
    columns; any cells; dtypes inferred by pandas or forced to object."""
    rows = draw(st.integers(0, MAX_ROWS))
    some = st.tuples(
        st.lists(st.sampled_from(FEATURE_NAMES), unique=True, min_size=len(FEATURE_NAMES) - 2),
        st.lists(
            st.one_of(st.text(max_size=8), st.integers(), st.sampled_from(FEATURE_NAMES)),
            max_size=2,
        ),
    ).map(lambda parts: parts[0] + parts[1])
    names: list[object] = draw(st.permutations(draw(st.one_of(st.just(FEATURE_NAMES), some))))
    data = {position: draw(any_column(name, rows)) for position, name in enumerate(names)}
    dtype = draw(st.sampled_from([None, object]))
    try:
        frame = pd.DataFrame(data, index=pd.RangeIndex(rows), dtype=dtype)
    except Exception:  # pandas (or pyarrow) cannot hold these values: not validate's business
        reject()
    frame.columns = pd.Index(names, dtype=object)
    return frame


# Helpers.


def frame_of(columns: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    return pd.DataFrame({name: list(values) for name, values in columns.items()})


def refused(
    frame: pd.DataFrame, ranges: Mapping[str, tuple[float, float]], policy: str = "reject"
) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate(frame, KNOWN, ranges, policy)
    return caught.value


def flag_sets(checked: ValidatedInput) -> list[set[str]]:
    return [set(flags.split(",")) - {""} for flags in checked.flags]


def is_real_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def assert_nothing_coerced(frame: pd.DataFrame, checked: ValidatedInput) -> None:
    """What validate accepted was already a real number or a string, and it came out as that
    number (as a float64) or as that string normalized."""
    for name in NUMERIC_NAMES:
        sent = frame[name].to_numpy(dtype=object)
        assert all(map(is_real_number, sent)), (name, sent)
        assert checked.frame[name].tolist() == [float(value) for value in sent]
    for name in CATEGORICAL_NAMES:
        sent = frame[name].to_numpy(dtype=object)
        assert all(isinstance(value, str) for value in sent), (name, sent)
        assert checked.frame[name].tolist() == [normalize_category(v) for v in sent]


# Properties.


@PROPERTY
@given(data=st.data())
def test_rows_inside_the_training_ranges_pass_unflagged_and_unchanged(data: st.DataObject):
    ranges = data.draw(training_ranges())
    columns = data.draw(valid_columns(ranges))
    frame = data.draw(frames(columns))

    checked = validate(frame, KNOWN, ranges)

    rows = len(frame)
    assert checked.flags == [""] * rows
    assert list(checked.frame.columns) == list(FEATURE_NAMES)
    assert checked.frame.index.equals(pd.RangeIndex(rows))
    for name in NUMERIC_NAMES:
        assert checked.frame[name].dtype == np.float64
        assert checked.frame[name].tolist() == [float(v) for v in columns[name]]
    for name in CATEGORICAL_NAMES:
        assert checked.frame[name].tolist() == columns[name]


@PROPERTY
@given(data=st.data())
def test_values_outside_the_training_range_are_flagged_with_exactly_their_features(
    data: st.DataObject,
):
    ranges = data.draw(training_ranges())
    columns = data.draw(valid_columns(ranges))
    rows = len(columns["type"])
    expected: list[set[str]] = [set() for _ in range(rows)]
    for name in NUMERIC_NAMES:
        feature, (low, high) = NUMERIC_BY_NAME[name], ranges[name]
        if feature.integral:  # whole numbers, as the ranges are
            below = st.integers(int(feature.minimum), int(low) - 1).map(float)
            above = st.integers(int(high) + 1, int(feature.maximum)).map(float)
        else:
            below = st.floats(feature.minimum, low, exclude_max=True)
            above = st.floats(high, feature.maximum, exclude_min=True)
        outside = [
            values
            for values, there in ((below, low > feature.minimum), (above, high < feature.maximum))
            if there
        ]
        if not outside:
            continue
        for row in data.draw(st.sets(st.integers(0, rows - 1))):
            columns[name][row] = data.draw(st.one_of(outside))
            expected[row].add(name)

    checked = validate(data.draw(frames(columns)), KNOWN, ranges)

    assert flag_sets(checked) == expected


@PROPERTY
@given(data=st.data(), corruption=corruptions())
def test_one_corrupted_cell_is_refused_naming_exactly_its_field_and_row(
    data: st.DataObject, corruption: tuple[str, str, Any]
):
    field, _kind, value = corruption
    ranges = data.draw(training_ranges())
    columns = data.draw(valid_columns(ranges))
    row = data.draw(st.integers(0, len(columns[field]) - 1))
    columns[field][row] = value
    frame = data.draw(frames(columns))

    error = refused(frame, ranges)

    assert [(e.field, e.row) for e in error.errors] == [(field, row)]
    assert field in error.errors[0].message
    assert f"row {row}" in error.errors[0].message
    assert str(error) == f"Invalid input ({field}): {error.errors[0].message}"


@PROPERTY
@given(data=st.data(), corruption=corruptions())
def test_many_rows_with_one_problem_are_capped_with_a_count_of_the_rest(
    data: st.DataObject, corruption: tuple[str, str, Any]
):
    field, _kind, value = corruption
    ranges = data.draw(training_ranges())
    columns = data.draw(valid_columns(ranges))
    rows = len(columns[field])
    bad = sorted(data.draw(st.sets(st.integers(0, rows - 1), min_size=1)))
    for row in bad:
        columns[field][row] = value

    error = refused(frame_of(columns), ranges)

    shown = bad[:ROWS_SHOWN_PER_PROBLEM]
    hidden = len(bad) - len(shown)
    assert [(e.field, e.row) for e in error.errors] == (
        [(field, row) for row in shown] + ([(field, None)] if hidden else [])
    )
    if hidden:
        assert error.errors[-1].message == f"{field}: the same problem in {hidden} more rows"


@settings(PROPERTY, max_examples=300)
@given(
    frame=any_frames(),
    policy=st.one_of(
        st.sampled_from(["reject", "flag"]),
        st.sampled_from(["reject", "flag"]),
        st.sampled_from(["reject", "flag"]),
        st.text(max_size=8),
    ),
)
def test_nothing_but_validation_error_escapes_and_nothing_is_coerced(
    frame: pd.DataFrame, policy: str
):
    rows = len(frame)
    try:
        checked = validate(
            frame, KNOWN, {n: (f.minimum, f.maximum) for n, f in NUMERIC_BY_NAME.items()}, policy
        )
    except ValidationError as error:
        event("refused")
        assert error.errors, "a ValidationError names at least one problem"
        for problem in error.errors:
            assert isinstance(problem.field, str)
            assert problem.row is None or 0 <= problem.row < rows
            assert isinstance(problem.message, str) and problem.message
        assert str(error).startswith("Invalid input (")
        return
    event("accepted")
    assert policy in ("reject", "flag")
    assert list(checked.frame.columns) == list(FEATURE_NAMES)
    assert len(checked.frame) == len(checked.flags) == rows > 0
    assert sorted(map(str, frame.columns)) == sorted(FEATURE_NAMES)
    assert_nothing_coerced(frame, checked)
    for name, feature in NUMERIC_BY_NAME.items():
        assert checked.frame[name].between(feature.minimum, feature.maximum).all()
        assert not feature.integral or (checked.frame[name] % 1 == 0).all(), name
    if policy == "reject":
        for name in CATEGORICAL_NAMES:
            assert set(checked.frame[name]) <= set(KNOWN[name])


@PROPERTY
@given(data=st.data(), policy=st.sampled_from(["reject", "flag"]))
def test_the_spelling_of_a_category_never_changes_the_outcome(data: st.DataObject, policy: str):
    ranges = data.draw(training_ranges())
    columns = data.draw(valid_columns(ranges))
    rows = len(columns["sector"])
    for row in data.draw(st.sets(st.integers(0, rows - 1))):
        columns["sector"][row] = data.draw(st.sampled_from(UNKNOWN_SECTORS))
    respelled = {
        **columns,
        **{
            name: [data.draw(spellings(value)) for value in columns[name]]
            for name in CATEGORICAL_NAMES
        },
    }

    outcomes = []
    for variant in (columns, respelled):
        try:
            checked = validate(frame_of(variant), KNOWN, ranges, policy)
            outcomes.append((checked.frame, checked.flags))
        except ValidationError as error:
            outcomes.append([(e.field, e.row) for e in error.errors])

    canonical, spelled = outcomes
    if isinstance(canonical, list):
        assert spelled == canonical
    else:
        assert not isinstance(spelled, list), spelled
        pd.testing.assert_frame_equal(spelled[0], canonical[0])
        assert spelled[1] == canonical[1]


# Values JSON cannot carry, but a Python caller of the model can: refused, never crashing
# validate with another exception and never coerced.


def _one_listing(dtype: type | None = None, **changes: object) -> pd.DataFrame:
    return pd.DataFrame([{**example_listing(), **changes}], dtype=dtype)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        # pandas 3 stores text as UTF-8 (pyarrow): an object column holding a lone surrogate
        pytest.param(_one_listing(object, sector="\ud800"), "sector", id="lone-surrogate-sector"),
        # a complex128 column is "numeric" to pandas; casting it to float drops the imaginary part
        pytest.param(_one_listing(net_area=170 + 5j), "net_area", id="complex-net-area"),
        pytest.param(_one_listing(object, net_area=170 + 5j), "net_area", id="complex-object"),
        pytest.param(_one_listing(object, net_area=Decimal("170")), "net_area", id="decimal"),
    ],
)
def test_values_json_cannot_carry_are_refused_naming_field_and_row(
    frame: pd.DataFrame, field: str
) -> None:
    wide = {n: (f.minimum, f.maximum) for n, f in NUMERIC_BY_NAME.items()}

    error = refused(frame, wide)

    assert [(e.field, e.row) for e in error.errors] == [(field, 0)]
