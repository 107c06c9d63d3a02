"""pyfunc.validation: what the served model accepts, refuses and flags, and how it says so."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pyfunc.contract import NAMES_SHOWN, ROWS_SHOWN_PER_PROBLEM, FieldError, ValidationError
from pyfunc.schema import (
    FEATURE_NAMES,
    NUMERIC_BY_NAME,
    NUMERIC_FEATURES,
    NumericFeature,
    example_listing,
)
from pyfunc.validation import validate

KNOWN = {"type": ["casa", "departamento"], "sector": ["las condes", "nunoa", "vitacura"]}
# The physical bounds as training ranges: nothing is flagged unless a test narrows them.
WIDE = {f.name: (f.minimum, f.maximum) for f in NUMERIC_FEATURES}
BAD_ROW = 2


def listings(rows: int = 3, **bad: object) -> pd.DataFrame:
    """`rows` valid listings; the values in `bad` replace those of row BAD_ROW."""
    records = [example_listing() for _ in range(rows)]
    if bad:
        records[BAD_ROW].update(bad)
    return pd.DataFrame.from_records(records)


def refused(frame: pd.DataFrame, **kwargs: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate(frame, KNOWN, kwargs.pop("ranges", WIDE), **kwargs)
    return caught.value


def bounds_message(name: str, value: float, row: int = BAD_ROW) -> str:
    feature = NUMERIC_BY_NAME[name]
    unit = f" {feature.unit}" if feature.unit else ""
    unreported = "" if feature.unreported is None else ", or 0 if not reported"
    return (
        f"{name} must be from {feature.minimum:g} to {feature.maximum:g}{unit}{unreported} "
        f"(row {row}, got {value:g})"
    )


def below(feature: NumericFeature) -> float:
    """A value under the feature's bounds and its "not reported" value."""
    floor = feature.minimum if feature.unreported is None else min(feature.minimum, 0)
    return floor - 1


def test_valid_frame_passes_with_normalized_categories() -> None:
    frame = listings(3)
    frame["sector"] = ["Las Condes ", "Ñuñoa", "  VITACURA"]
    frame["type"] = ["Casa", "DEPARTAMENTO", "departamento"]

    checked = validate(frame, KNOWN, WIDE)

    assert list(checked.frame.columns) == list(FEATURE_NAMES)
    assert checked.frame["sector"].tolist() == ["las condes", "nunoa", "vitacura"]
    assert checked.frame["type"].tolist() == ["casa", "departamento", "departamento"]
    for feature in NUMERIC_FEATURES:
        assert checked.frame[feature.name].dtype == np.float64
        assert checked.frame[feature.name].tolist() == [feature.example] * 3
    assert checked.flags == ["", "", ""]


def test_columns_are_reordered_and_the_index_is_reset() -> None:
    frame = listings(2)[list(reversed(FEATURE_NAMES))]
    frame.index = [10, 20]

    checked = validate(frame, KNOWN, WIDE)

    assert list(checked.frame.columns) == list(FEATURE_NAMES)
    assert checked.frame.index.tolist() == [0, 1]


EXPECTED_COLUMNS = ", ".join(FEATURE_NAMES)
BAD_VALUES = [
    pytest.param(
        {"net_area": "0.5"},
        "net_area",
        f"net_area must be a number (row {BAD_ROW}, got str '0.5')",
        id="number-as-string",
    ),
    pytest.param(
        {"n_rooms": True},
        "n_rooms",
        f"n_rooms must be a number (row {BAD_ROW}, got bool True)",
        id="bool",
    ),
    pytest.param(
        {"n_bathroom": [2]},
        "n_bathroom",
        f"n_bathroom must be a number (row {BAD_ROW}, got list [2])",
        id="list",
    ),
    pytest.param(
        {"net_usable_area": None},
        "net_usable_area",
        f"net_usable_area must be a finite number (row {BAD_ROW}, got nan)",
        id="none",
    ),
    pytest.param(
        {"latitude": float("nan")},
        "latitude",
        f"latitude must be a finite number (row {BAD_ROW}, got nan)",
        id="nan",
    ),
    pytest.param(
        {"net_area": float("inf")},
        "net_area",
        f"net_area must be a finite number (row {BAD_ROW}, got inf)",
        id="+inf",
    ),
    pytest.param(
        {"longitude": float("-inf")},
        "longitude",
        f"longitude must be a finite number (row {BAD_ROW}, got -inf)",
        id="-inf",
    ),
    *(
        pytest.param(
            {f.name: below(f)},
            f.name,
            bounds_message(f.name, below(f)),
            id=f"{f.name}-below-minimum",
        )
        for f in NUMERIC_FEATURES
    ),
    *(
        pytest.param(
            {f.name: f.maximum + 1},
            f.name,
            bounds_message(f.name, f.maximum + 1),
            id=f"{f.name}-above-maximum",
        )
        for f in NUMERIC_FEATURES
    ),
    pytest.param(
        {"n_rooms": 2.5},
        "n_rooms",
        f"n_rooms must be a whole number (row {BAD_ROW}, got 2.5)",
        id="half-a-room",
    ),
    pytest.param(
        {"n_bathroom": 1.25},
        "n_bathroom",
        f"n_bathroom must be a whole number (row {BAD_ROW}, got 1.25)",
        id="a-quarter-bathroom",
    ),
    pytest.param(
        {"n_rooms": 20.5},
        "n_rooms",
        bounds_message("n_rooms", 20.5),
        id="out-of-bounds-says-only-that",
    ),
    pytest.param(
        {"sector": "Marte"},
        "sector",
        f"sector 'Marte' is unknown (row {BAD_ROW}); known: las condes, nunoa, vitacura",
        id="unknown-sector",
    ),
    pytest.param(
        {"type": "oficina"},
        "type",
        f"type 'oficina' is unknown (row {BAD_ROW}); known: casa, departamento",
        id="unknown-type",
    ),
    pytest.param(
        {"sector": 5},
        "sector",
        f"sector must be a string (row {BAD_ROW}, got int 5)",
        id="sector-as-number",
    ),
    pytest.param(
        {"type": 1.5},
        "type",
        f"type must be a string (row {BAD_ROW}, got float 1.5)",
        id="type-as-number",
    ),
    pytest.param(
        {"sector": True},
        "sector",
        f"sector must be a string (row {BAD_ROW}, got bool True)",
        id="sector-as-bool",
    ),
]


@pytest.mark.parametrize(("bad", "field", "message"), BAD_VALUES)
def test_bad_value_is_refused_with_field_row_and_message(
    bad: dict, field: str, message: str
) -> None:
    error = refused(listings(3, **bad))

    assert error.errors == [FieldError(field, BAD_ROW, message)]
    assert str(error) == f"Invalid input ({field}): {message}"


def test_a_column_of_booleans_is_not_numbers() -> None:
    frame = listings(3)
    frame["n_rooms"] = [True, False, True]

    error = refused(frame)

    assert error.errors == [
        FieldError("n_rooms", row, f"n_rooms must be a number (row {row}, got bool {value})")
        for row, value in enumerate([True, False, True])
    ]


def test_missing_column_is_named() -> None:
    error = refused(listings(3).drop(columns=["net_area"]))

    assert error.errors == [FieldError("net_area", None, "net_area is a required column")]
    assert str(error) == "Invalid input (net_area): net_area is a required column"


def test_unexpected_column_is_named_with_the_expected_ones() -> None:
    frame = listings(3).assign(price=10_000)

    error = refused(frame)

    message = f"'price' is not a feature (expected: {EXPECTED_COLUMNS})"
    assert error.errors == [FieldError("price", None, message)]
    assert str(error) == f"Invalid input (price): {message}"


def test_sector_missing_in_a_text_column_is_refused() -> None:
    frame = listings(3)
    frame["sector"] = pd.Series(["nunoa", "nunoa", None], dtype="str")

    error = refused(frame)

    assert error.errors == [
        FieldError("sector", BAD_ROW, f"sector is missing (row {BAD_ROW}, got null)")
    ]


def test_every_problem_is_reported_in_one_error() -> None:
    frame = listings(3, net_area="abc", sector="Marte", latitude=float("inf"))
    frame = frame.drop(columns=["n_rooms"]).assign(id=[1, 2, 3])

    error = refused(frame)

    assert {(e.field, e.row) for e in error.errors} == {
        ("n_rooms", None),
        ("id", None),
        ("net_area", BAD_ROW),
        ("latitude", BAD_ROW),
        ("sector", BAD_ROW),
    }
    assert str(error).startswith("Invalid input (id, latitude, n_rooms, net_area, sector): ")
    for problem in error.errors:
        assert problem.message in str(error)


def test_one_column_with_two_problems_reports_both() -> None:
    too_small = NUMERIC_BY_NAME["net_area"].minimum / 2
    frame = listings(3)
    frame["net_area"] = ["120", too_small, 150.0]

    error = refused(frame)

    assert error.errors == [
        FieldError("net_area", 0, "net_area must be a number (row 0, got str '120')"),
        FieldError("net_area", 1, bounds_message("net_area", too_small, row=1)),
    ]


def test_rows_shown_per_problem_are_capped_with_a_count_of_the_rest() -> None:
    frame = pd.DataFrame.from_records([example_listing()] * 1_000)
    frame["net_usable_area"] = -1.0

    error = refused(frame)

    hidden = 1_000 - ROWS_SHOWN_PER_PROBLEM
    assert [e.row for e in error.errors] == [*range(ROWS_SHOWN_PER_PROBLEM), None]
    assert {e.field for e in error.errors} == {"net_usable_area"}
    assert error.errors[-1].message == f"net_usable_area: the same problem in {hidden} more rows"
    assert len(str(error)) < 1_000


def test_empty_frame_is_refused() -> None:
    error = refused(pd.DataFrame(columns=list(FEATURE_NAMES)))

    assert error.errors == [FieldError("rows", None, "no rows to price")]
    assert str(error) == "Invalid input (rows): no rows to price"


def test_unknown_policy_is_refused() -> None:
    error = refused(listings(3), on_unknown_category="guess")

    message = "on_unknown_category must be one of reject, flag, got 'guess'"
    assert error.errors == [FieldError("on_unknown_category", None, message)]


def test_flag_policy_keeps_and_flags_an_unknown_category() -> None:
    frame = listings(3, sector="Marte ")

    checked = validate(frame, KNOWN, WIDE, on_unknown_category="flag")

    assert len(checked.frame) == 3
    assert checked.frame["sector"].tolist() == ["las condes", "las condes", "marte"]
    assert checked.flags == ["", "", "sector"]


def test_flag_policy_still_refuses_what_is_not_text() -> None:
    error = refused(listings(3, sector=7), on_unknown_category="flag")

    assert error.errors == [
        FieldError("sector", BAD_ROW, f"sector must be a string (row {BAD_ROW}, got int 7)")
    ]


def test_values_outside_the_training_range_are_flagged_not_refused() -> None:
    ranges = {**WIDE, "net_usable_area": (50.0, 200.0), "net_area": (50.0, 300.0)}
    frame = listings(4)
    frame["net_usable_area"] = [140.0, 400.0, 4_000.0, 30.0]
    frame["net_area"] = [170.0, 170.0, 10_000.0, 170.0]
    frame.loc[3, "sector"] = "Marte"

    checked = validate(frame, KNOWN, ranges, on_unknown_category="flag")

    assert checked.flags == [
        "",
        "net_usable_area",
        "net_usable_area,net_area",
        "sector,net_usable_area",
    ]
    assert checked.frame["net_usable_area"].tolist() == [140.0, 400.0, 4_000.0, 30.0]


def test_training_range_edges_are_inside() -> None:
    frame = listings(2)
    frame["net_usable_area"] = [50.0, 200.0]

    checked = validate(frame, KNOWN, {"net_usable_area": (50.0, 200.0)})

    assert checked.flags == ["", ""]


def test_unreported_bathrooms_and_net_area_are_priced_and_flagged() -> None:
    frame = listings(4)
    frame["n_bathroom"] = [2.0, 0.0, 2.0, 0]
    frame["net_area"] = [170.0, 170.0, 0.0, 0]

    checked = validate(frame, KNOWN, WIDE)

    assert checked.flags == ["", "n_bathroom", "net_area", "net_area,n_bathroom"]
    assert checked.frame["n_bathroom"].tolist() == [2.0, 0.0, 2.0, 0.0]
    assert checked.frame["net_area"].tolist() == [170.0, 170.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        pytest.param(
            {"net_usable_area": 0.0},
            "net_usable_area",
            f"net_usable_area must be from 10 to 5000 m2 (row {BAD_ROW}, got 0)",
            id="no-usable-area",
        ),
        pytest.param(
            {"net_usable_area": 0.0, "net_area": 0.0},
            "net_usable_area",
            f"net_usable_area must be from 10 to 5000 m2 (row {BAD_ROW}, got 0)",
            id="both-areas-zero",
        ),
        pytest.param(
            {"net_area": 5.0},
            "net_area",
            f"net_area must be from 10 to 200000 m2, or 0 if not reported (row {BAD_ROW}, got 5)",
            id="net-area-neither-zero-nor-in-bounds",
        ),
        pytest.param(
            {"n_bathroom": -1},
            "n_bathroom",
            f"n_bathroom must be from 1 to 20, or 0 if not reported (row {BAD_ROW}, got -1)",
            id="negative-bathrooms",
        ),
    ],
)
def test_absurd_areas_and_counts_are_still_refused(bad: dict, field: str, message: str) -> None:
    error = refused(listings(3, **bad))

    assert error.errors == [FieldError(field, BAD_ROW, message)]


def test_rooms_and_bathrooms_are_whole_numbers_sent_as_ints_or_floats() -> None:
    frame = listings(2)
    frame["n_rooms"] = [3, 4]
    frame["n_bathroom"] = [2.0, 1.0]

    checked = validate(frame, KNOWN, WIDE)

    assert checked.frame["n_rooms"].tolist() == [3.0, 4.0]
    assert checked.frame["n_bathroom"].tolist() == [2.0, 1.0]


def test_physical_bounds_are_inclusive() -> None:
    frame = pd.DataFrame.from_records([example_listing(), example_listing()])
    for feature in NUMERIC_FEATURES:
        frame[feature.name] = [feature.minimum, feature.maximum]

    checked = validate(frame, KNOWN, WIDE)

    assert checked.frame[[f.name for f in NUMERIC_FEATURES]].to_numpy().tolist() == [
        [f.minimum for f in NUMERIC_FEATURES],
        [f.maximum for f in NUMERIC_FEATURES],
    ]


def test_rows_are_positions_not_index_labels() -> None:
    frame = listings(3, n_rooms=-3.0)
    frame.index = [100, 101, 102]

    error = refused(frame)

    assert [e.row for e in error.errors] == [BAD_ROW]
    assert re.search(rf"\(row {BAD_ROW}, got -3\)", str(error))


def test_ten_thousand_unknown_columns_and_a_megabyte_value_give_a_short_error() -> None:
    base = listings(sector="x" * 1_000_000)
    extra = pd.DataFrame(1.0, index=base.index, columns=[f"extra_{n}" for n in range(10_000)])
    frame = pd.concat([base, extra], axis=1)

    error = refused(frame)

    unknown = [e for e in error.errors if e.field.startswith("extra_")]
    assert [e.field for e in unknown] == [f"extra_{n}" for n in range(NAMES_SHOWN)]
    assert (
        FieldError("columns", None, f"{10_000 - NAMES_SHOWN} more columns are not features")
        in error.errors
    )
    [sector] = [e for e in error.errors if e.field == "sector"]
    assert sector.row == BAD_ROW and "'xxxxxxxx" in sector.message
    assert len(str(error)) < 2_000
