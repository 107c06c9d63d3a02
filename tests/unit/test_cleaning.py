"""steps.cleaning: schema checks of raw listings and the cleaning rules, with their accounting."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pyfunc.schema import NUMERIC_BY_NAME, NUMERIC_FEATURES, TARGET
from steps.cleaning import COLUMNS, CleaningReport, DataError, check_schema, clean
from steps.generate import dirt_counts, generate_listings

WHERE = "data/train.csv"
GOOD = {
    "type": "departamento",
    "sector": "las condes",
    "net_usable_area": 100.0,
    "net_area": 110.0,
    "n_rooms": 3.0,
    "n_bathroom": 2.0,
    "latitude": -33.41,
    "longitude": -70.56,
    "price": 10_000.0,
}
OTHER = {
    **GOOD,
    "type": "casa",
    "sector": "vitacura",
    "net_usable_area": 220.0,
    "net_area": 600.0,
    "price": 25_000.0,
}


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def raw(*records: dict) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(records), columns=list(COLUMNS))


def test_check_schema_keeps_the_schema_columns_as_numbers() -> None:
    frame = raw(GOOD, OTHER).assign(id=[1, 2], net_area=["110", "600.5"])

    checked = check_schema(frame, WHERE)

    assert list(checked.columns) == list(COLUMNS)
    assert checked["net_area"].tolist() == [110.0, 600.5]
    assert (checked.dtypes.drop(["type", "sector"]) == np.float64).all()


def test_check_schema_refuses_no_rows() -> None:
    with pytest.raises(DataError, match=exactly(f"{WHERE}: no rows")):
        check_schema(pd.DataFrame(columns=list(COLUMNS)), WHERE)


def test_check_schema_lists_missing_columns_and_those_found() -> None:
    frame = raw(GOOD).drop(columns=["sector", "price"])

    with pytest.raises(
        DataError,
        match=exactly(
            f"{WHERE}: Invalid input (price, sector): sector is a required column; price is a "
            "required column; found: type, net_usable_area, net_area, n_rooms, n_bathroom, "
            "latitude, longitude"
        ),
    ):
        check_schema(frame, WHERE)


def test_check_schema_names_a_non_numeric_value_and_its_row() -> None:
    frame = raw(GOOD, GOOD, GOOD).assign(n_rooms=[3.0, "three", 2.0])

    with pytest.raises(
        DataError,
        match=exactly(
            f"{WHERE}: Invalid input (n_rooms): n_rooms must be a number (row 1, got str 'three')"
        ),
    ):
        check_schema(frame, WHERE)


def test_check_schema_shows_five_bad_values_and_counts_the_rest() -> None:
    frame = raw(*[GOOD] * 8).assign(price=["a", "b", "c", "d", "e", "f", "g", 1.0])

    with pytest.raises(
        DataError,
        match=exactly(
            f"{WHERE}: Invalid input (price): "
            + "; ".join(
                f"price must be a number (row {row}, got str '{value}')"
                for row, value in enumerate("abcde")
            )
            + "; price: the same problem in 2 more rows"
        ),
    ):
        check_schema(frame, WHERE)


def test_check_schema_refuses_booleans_as_numbers() -> None:
    frame = raw(GOOD, GOOD).assign(n_bathroom=[True, False])

    with pytest.raises(
        DataError,
        match=exactly(
            f"{WHERE}: Invalid input (n_bathroom): n_bathroom must be a number (row 0, got bool "
            "True); n_bathroom must be a number (row 1, got bool False)"
        ),
    ):
        check_schema(frame, WHERE)


def test_check_schema_refuses_non_text_in_sector() -> None:
    frame = raw(GOOD, GOOD).assign(sector=["las condes", 5])

    with pytest.raises(
        DataError,
        match=exactly(
            f"{WHERE}: Invalid input (sector): sector must be a string (row 1, got int 5)"
        ),
    ):
        check_schema(frame, WHERE)


def test_check_schema_lets_missing_values_through_to_cleaning() -> None:
    frame = raw(GOOD, {**GOOD, "sector": None, "net_area": None})

    checked = check_schema(frame, WHERE)

    assert checked.isna().sum().to_dict() == {c: int(c in ("sector", "net_area")) for c in COLUMNS}


DROPPED = [
    pytest.param({"net_area": np.nan}, "missing_value", id="missing-number"),
    pytest.param({"sector": None}, "missing_value", id="missing-sector"),
    pytest.param({"price": 0.0}, "price_out_of_bounds", id="price-zero"),
    pytest.param(
        {"price": TARGET.minimum - 1}, "price_out_of_bounds", id="price-under-schema-minimum"
    ),
    pytest.param(
        {"net_usable_area": 0.0, "net_area": 0.0},
        "net_usable_area_out_of_bounds",
        id="both-areas-zero",
    ),
    pytest.param(
        {"net_usable_area": 180_116.0}, "net_usable_area_out_of_bounds", id="absurd-usable-area"
    ),
    pytest.param({"net_area": 1_430_000.0}, "net_area_out_of_bounds", id="absurd-total-area"),
    pytest.param({"n_rooms": 55.0}, "n_rooms_out_of_bounds", id="55-rooms"),
    pytest.param({"net_usable_area": 0.0}, "net_usable_area_out_of_bounds", id="no-usable-area"),
    pytest.param({"net_area": 5.0}, "net_area_out_of_bounds", id="total-area-neither-0-nor-10"),
    pytest.param({"n_bathroom": -1.0}, "n_bathroom_out_of_bounds", id="negative-bathrooms"),
    pytest.param({"n_rooms": 2.5}, "n_rooms_not_whole", id="half-a-room"),
    pytest.param({"n_bathroom": 1.5}, "n_bathroom_not_whole", id="half-a-bathroom"),
    pytest.param({"n_rooms": 20.5}, "n_rooms_out_of_bounds", id="out-of-bounds-before-whole"),
    pytest.param({"latitude": 0.0, "longitude": 0.0}, "latitude_out_of_bounds", id="null-island"),
    pytest.param(
        {"latitude": -36.827, "longitude": -73.050}, "latitude_out_of_bounds", id="concepcion"
    ),
    pytest.param(
        {"longitude": NUMERIC_BY_NAME["longitude"].minimum - 0.5},
        "longitude_out_of_bounds",
        id="west-of-santiago",
    ),
]


@pytest.mark.parametrize(("changes", "reason"), DROPPED)
def test_clean_drops_a_bad_row_under_one_reason(changes: dict, reason: str) -> None:
    cleaned, report = clean(raw(GOOD, {**GOOD, **changes}, OTHER))

    assert report == CleaningReport(rows_read=3, rows_kept=2, dropped={reason: 1})
    pd.testing.assert_frame_equal(cleaned, raw(GOOD, OTHER))


def test_clean_repairs_swapped_coordinates() -> None:
    swapped = {**OTHER, "latitude": OTHER["longitude"], "longitude": OTHER["latitude"]}

    cleaned, report = clean(raw(GOOD, swapped))

    assert report == CleaningReport(rows_read=2, rows_kept=2, repaired={"coordinates_swapped": 1})
    pd.testing.assert_frame_equal(cleaned, raw(GOOD, OTHER))


def test_clean_drops_duplicates_after_respelling() -> None:
    frame = raw(GOOD, {**OTHER, "sector": "Vitacura"}, {**OTHER, "sector": "vitacura "}, OTHER)

    cleaned, report = clean(frame)

    assert report == CleaningReport(
        rows_read=4, rows_kept=2, dropped={"duplicate": 2}, repaired={"sector_respelled": 2}
    )
    pd.testing.assert_frame_equal(cleaned, raw(GOOD, OTHER))


def test_clean_respells_categories() -> None:
    frame = raw(
        {**GOOD, "type": "Departamento", "sector": "LAS  Condes"}, {**OTHER, "sector": "Ñuñoa"}
    )

    cleaned, report = clean(frame)

    assert cleaned["type"].tolist() == ["departamento", "casa"]
    assert cleaned["sector"].tolist() == ["las condes", "nunoa"]
    assert report.repaired == {"type_respelled": 1, "sector_respelled": 2}


def test_clean_drops_a_test_sector_unseen_in_training() -> None:
    known = {"type": ["casa", "departamento"], "sector": ["las condes", "vitacura"]}
    frame = raw(GOOD, {**GOOD, "sector": "Providencia"}, OTHER)

    cleaned, report = clean(frame, known_categories=known)

    assert report.dropped == {"sector_unseen_in_train": 1}
    assert report.rows_kept == 2
    assert cleaned["sector"].tolist() == ["las condes", "vitacura"]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"n_bathroom": 0.0}, "n_bathroom_unreported", id="no-bathroom"),
        pytest.param({"net_area": 0.0}, "net_area_unreported", id="no-total-area"),
    ],
)
def test_clean_keeps_and_flags_a_value_not_reported(changes: dict, reason: str) -> None:
    cleaned, report = clean(raw(GOOD, {**GOOD, **changes}, OTHER))

    assert report == CleaningReport(rows_read=3, rows_kept=3, flagged={reason: 1})
    pd.testing.assert_frame_equal(cleaned, raw(GOOD, {**GOOD, **changes}, OTHER))


def test_clean_flags_usable_area_larger_than_total_but_keeps_it() -> None:
    frame = raw(GOOD, {**OTHER, "net_usable_area": 700.0})

    cleaned, report = clean(frame)

    assert report == CleaningReport(
        rows_read=2, rows_kept=2, flagged={"usable_area_exceeds_total_area": 1}
    )
    assert cleaned["net_usable_area"].tolist() == [100.0, 700.0]


def test_clean_leaves_its_input_untouched() -> None:
    frame = raw(
        {**GOOD, "sector": "Las Condes", "latitude": -70.56, "longitude": -33.41},
        {**OTHER, "price": 0.0},
    )
    before = frame.copy()

    clean(frame)

    pd.testing.assert_frame_equal(frame, before)


def test_clean_accounts_for_every_row_of_a_dirty_frame() -> None:
    dirty = check_schema(generate_listings(3_000, seed=1), WHERE)

    cleaned, report = clean(dirty)

    assert report.rows_read == 3_000
    assert report.rows_read == report.rows_kept + sum(report.dropped.values())
    assert report.rows_kept == len(cleaned)
    expected = dirt_counts(3_000)
    assert report.repaired["coordinates_swapped"] == expected["swapped_coordinates"]
    assert report.dropped["duplicate"] == expected["duplicates"]
    assert report.dropped["price_out_of_bounds"] == (
        expected["price_zero"] + expected["price_under_1000"]
    )
    assert not cleaned.duplicated().any()
    assert report.flagged["n_bathroom_unreported"] == expected["zero_bathrooms"]
    assert report.flagged["net_area_unreported"] == expected["zero_net_area"]
    for feature in (*NUMERIC_FEATURES, TARGET):
        values = cleaned[feature.name]
        inside = values.between(feature.minimum, feature.maximum) | (values == feature.unreported)
        assert inside.all(), feature.name
