"""pyfunc.validation.validate_each_row: the valid rows, and for each invalid row why it is refused.

`validate` is the reference: a row's reason is what `validate` says about that row alone, without
the row number, and the valid rows come out as `validate` returns them when sent alone.
"""

from __future__ import annotations

import pandas as pd
import pytest

from pyfunc.contract import ROWS_SHOWN_PER_PROBLEM, FieldError, ValidationError
from pyfunc.schema import FEATURE_NAMES, NUMERIC_BY_NAME, NUMERIC_FEATURES, example_listing
from pyfunc.validation import ValidatedInput, validate, validate_each_row

KNOWN = {"type": ["casa", "departamento"], "sector": ["las condes", "nunoa", "vitacura"]}
# The physical bounds as training ranges: nothing is flagged unless a test narrows them.
WIDE = {f.name: (f.minimum, f.maximum) for f in NUMERIC_FEATURES}
# Usable area flagged above 200 m2, inside the physical bounds: valid rows can carry flags.
NARROW = {**WIDE, "net_usable_area": (50.0, 200.0)}

PROBLEMS = {
    "number-as-string": {"net_area": "0.5"},
    "nan": {"latitude": float("nan")},
    "+inf": {"net_area": float("inf")},
    "-inf": {"longitude": float("-inf")},
    "below-minimum": {"n_rooms": NUMERIC_BY_NAME["n_rooms"].minimum - 1},
    "above-maximum": {"n_bathroom": NUMERIC_BY_NAME["n_bathroom"].maximum + 1},
    "half-a-room": {"n_rooms": 2.5},
    "unknown-sector": {"sector": "Marte"},
    "unknown-type": {"type": "oficina"},
    "type-as-number": {"type": 1.5},
    "sector-as-bool": {"sector": True},
    "sector-none": {"sector": None},
    "number-none": {"net_usable_area": None},
    "number-as-bool": {"n_rooms": True},
    "several": {"net_area": "abc", "latitude": float("inf"), "sector": "Marte"},
}


def listing(**changes: object) -> dict[str, object]:
    return {**example_listing(), **changes}


def frame_of(records: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame.from_records(records)


def without_row(message: str) -> str:
    """`validate`'s message about row 0 of a one-row frame, without the row."""
    assert "row 0" in message, message
    return message.replace("row 0, ", "").replace(" (row 0)", "")


def reason_of(changes: dict[str, object], **kwargs: object) -> str:
    """What `validate` says about one listing with `changes`, without the row, joined by '; '."""
    with pytest.raises(ValidationError) as caught:
        validate(frame_of([listing(**changes)]), KNOWN, WIDE, **kwargs)
    errors = caught.value.errors
    assert all(e.row == 0 for e in errors), errors
    return "; ".join(without_row(e.message) for e in errors)


def each_row(frame: pd.DataFrame, ranges=WIDE, **kwargs: object):
    return validate_each_row(frame, KNOWN, ranges, **kwargs)


def assert_same(got: ValidatedInput, expected: ValidatedInput) -> None:
    pd.testing.assert_frame_equal(got.frame, expected.frame)
    assert got.flags == expected.flags


def mixed_records() -> tuple[list[dict[str, object]], dict[int, str]]:
    """Valid listings interleaved with one listing per problem; the problem of each bad position.

    Some valid listings are outside NARROW's usable area, or spelled oddly, so that flags and
    normalization of the valid rows are checked too.
    """
    valid = [listing(), listing(net_usable_area=400.0), listing(sector=" Ñuñoa", type="CASA")]
    records: list[dict[str, object]] = []
    bad: dict[int, str] = {}
    for n, name in enumerate(PROBLEMS):
        records.append(valid[n % len(valid)])
        bad[len(records)] = name
        records.append(listing(**PROBLEMS[name]))
    records.append(listing(net_usable_area=4_000.0))
    return records, bad


def test_each_kind_of_problem_gets_validates_message_without_the_row() -> None:
    records, bad = mixed_records()

    _, reasons = each_row(frame_of(records), NARROW)

    assert sorted(reasons) == sorted(bad)
    for row, name in bad.items():
        assert reasons[row] == reason_of(PROBLEMS[name]), name
        assert "row" not in reasons[row], reasons[row]


def test_expected_reasons_for_some_problems() -> None:
    """The reference itself, spelled out, so that a change in both functions is seen too."""
    rooms, bathrooms = NUMERIC_BY_NAME["n_rooms"], NUMERIC_BY_NAME["n_bathroom"]
    frame = frame_of(
        [
            listing(net_area="0.5"),
            listing(),
            listing(latitude=float("nan")),
            listing(n_rooms=-1.0),
            listing(sector="Marte"),
            listing(type=1.5),
            listing(n_bathroom=21.0, sector=5),
            listing(n_rooms=2.5),
        ]
    )

    _, reasons = each_row(frame)

    assert reasons == {
        0: "net_area must be a number (got str '0.5')",
        2: "latitude must be a finite number (got nan)",
        3: f"n_rooms must be from {rooms.allowed()} (got -1)",
        4: "sector 'Marte' is unknown; known: las condes, nunoa, vitacura",
        5: "type must be a string (got float 1.5)",
        6: f"n_bathroom must be from {bathrooms.allowed()}, or 0 if not reported (got 21); "
        "sector must be a string (got int 5)",
        7: "n_rooms must be a whole number (got 2.5)",
    }


def test_several_problems_in_one_row_are_joined_in_validates_order() -> None:
    frame = frame_of([listing(), listing(**PROBLEMS["several"])])

    _, reasons = each_row(frame)

    one_by_one = [reason_of({name: value}) for name, value in PROBLEMS["several"].items()]
    assert list(reasons) == [1]
    assert [m.split(" ")[0] for m in one_by_one] == ["net_area", "latitude", "sector"]
    assert reasons[1] == "; ".join(one_by_one) == reason_of(PROBLEMS["several"])


def test_valid_rows_are_what_validate_returns_for_them_alone() -> None:
    records, bad = mixed_records()
    alone = [r for n, r in enumerate(records) if n not in bad]

    checked, _ = each_row(frame_of(records), NARROW)

    expected = validate(frame_of(alone), KNOWN, NARROW)
    assert_same(checked, expected)
    assert checked.frame.index.tolist() == list(range(len(alone)))
    assert checked.flags == ["net_usable_area" if r["net_usable_area"] > 200 else "" for r in alone]
    assert checked.flags.count("net_usable_area") >= 2


def test_a_clean_frame_is_accepted_whole_like_validate_does() -> None:
    frame = frame_of([listing(), listing(net_usable_area=400.0, sector="VITACURA"), listing()])

    checked, reasons = each_row(frame, NARROW)

    assert reasons == {}
    assert_same(checked, validate(frame, KNOWN, NARROW))
    assert checked.flags == ["", "net_usable_area", ""]


def test_rows_are_positions_not_index_labels() -> None:
    frame = frame_of([listing(), listing(n_rooms=-3.0), listing(net_usable_area=400.0)])
    frame.index = [100, 101, 102]

    checked, reasons = each_row(frame, NARROW)

    assert list(reasons) == [1]
    assert checked.frame.index.tolist() == [0, 1]
    assert checked.flags == ["", "net_usable_area"]
    assert checked.frame["net_usable_area"].tolist() == [140.0, 400.0]


def test_every_bad_row_gets_its_reason_without_a_cap() -> None:
    rows = 1_000
    records = [listing(net_usable_area=-1.0 if n % 2 else 140.0 + n) for n in range(rows)]
    frame = frame_of(records)

    checked, reasons = each_row(frame)

    bad = list(range(1, rows, 2))
    assert sorted(reasons) == bad
    area = NUMERIC_BY_NAME["net_usable_area"]
    assert set(reasons.values()) == {
        f"net_usable_area must be from {area.allowed()} {area.unit} (got -1)"
    }
    assert checked.frame["net_usable_area"].tolist() == [140.0 + n for n in range(0, rows, 2)]
    with pytest.raises(ValidationError) as caught:
        validate(frame, KNOWN, WIDE)
    assert len([e for e in caught.value.errors if e.row is not None]) == ROWS_SHOWN_PER_PROBLEM


def test_when_every_row_is_invalid_no_row_is_returned() -> None:
    frame = frame_of([listing(n_rooms=-1.0), listing(sector="Marte"), listing(latitude=0.0)])

    checked, reasons = each_row(frame)

    assert sorted(reasons) == [0, 1, 2]
    assert list(checked.frame.columns) == list(FEATURE_NAMES)
    assert len(checked.frame) == 0
    assert checked.flags == []


def test_flag_policy_keeps_and_flags_unknown_categories() -> None:
    frame = frame_of(
        [
            listing(sector="Marte "),
            listing(sector=7),
            listing(),
            listing(type="Oficina", net_usable_area=400.0),
            listing(n_rooms=-1.0),
        ]
    )

    checked, reasons = each_row(frame, NARROW, on_unknown_category="flag")

    assert sorted(reasons) == [1, 4]
    assert reasons[1] == reason_of({"sector": 7}, on_unknown_category="flag")
    assert checked.flags == ["sector", "", "type,net_usable_area"]
    assert checked.frame["sector"].tolist() == ["marte", "las condes", "las condes"]
    assert checked.frame["type"].tolist() == ["departamento", "departamento", "oficina"]
    expected = validate(frame.iloc[[0, 2, 3]], KNOWN, NARROW, on_unknown_category="flag")
    assert_same(checked, expected)


def test_reject_policy_gives_unknown_categories_a_reason() -> None:
    frame = frame_of([listing(sector="Marte "), listing()])

    checked, reasons = each_row(frame, on_unknown_category="reject")

    assert list(reasons) == [0]
    assert reasons[0].startswith("sector 'Marte ' is unknown; known: ")
    assert checked.flags == [""]


def refused(frame: pd.DataFrame, **kwargs: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        each_row(frame, **kwargs)
    return caught.value


def test_a_missing_column_refuses_the_batch() -> None:
    error = refused(frame_of([listing(), listing()]).drop(columns=["net_area"]))

    assert error.errors == [FieldError("net_area", None, "net_area is a required column")]
    assert str(error) == "Invalid input (net_area): net_area is a required column"


def test_a_missing_column_refuses_the_batch_even_with_bad_rows() -> None:
    frame = frame_of([listing(), listing(n_rooms=-1.0)]).drop(columns=["net_area"])

    error = refused(frame)

    assert FieldError("net_area", None, "net_area is a required column") in error.errors


def test_an_unexpected_column_refuses_the_batch() -> None:
    error = refused(frame_of([listing(), listing()]).assign(price=10_000))

    message = f"'price' is not a feature (expected: {', '.join(FEATURE_NAMES)})"
    assert error.errors == [FieldError("price", None, message)]


def test_an_empty_frame_is_refused() -> None:
    error = refused(pd.DataFrame(columns=list(FEATURE_NAMES)))

    assert error.errors == [FieldError("rows", None, "no rows to price")]


def test_an_unknown_policy_is_refused() -> None:
    error = refused(frame_of([listing(), listing(n_rooms=-1.0)]), on_unknown_category="guess")

    message = "on_unknown_category must be one of reject, flag, got 'guess'"
    assert error.errors == [FieldError("on_unknown_category", None, message)]
