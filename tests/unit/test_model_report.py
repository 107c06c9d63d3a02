"""The served model with params on_invalid_row="report" (batch scoring), in process.

A small forest (conftest's `small_pipeline`) is logged to a throw-away store and loaded back as
tests/unit/test_model.py does. Reject mode, the default, is the reference: a valid row's price in
a report is the price reject mode gives when the valid rows are sent alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from pyfunc.model import InvalidInputError
from pyfunc.schema import (
    FEATURE_NAMES,
    FLAG_COLUMN,
    HIGH_COLUMN,
    INVALID_COLUMN,
    LOW_COLUMN,
    NUMERIC_BY_NAME,
    PREDICTION_COLUMN,
)

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel
    from sklearn.pipeline import Pipeline

    from tests.support.mlflow_store import Store

REPORT = {"on_invalid_row": "report"}
ROWS = 12
# Position in the batch -> (column, value) that makes the row invalid; numbers stay numbers and
# categories stay text or None, as batch scoring types them before the model sees them.
SPOILED = {
    1: ("n_rooms", NUMERIC_BY_NAME["n_rooms"].minimum - 1),
    4: ("latitude", float("nan")),
    5: ("net_area", float("inf")),
    8: ("sector", "Marte"),
    9: ("type", None),
    11: ("n_bathroom", NUMERIC_BY_NAME["n_bathroom"].maximum + 1),
}


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(FEATURE_NAMES)].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(mlflow_store: Store, small_pipeline: Pipeline, few_listings: pd.DataFrame) -> PyFuncModel:
    import mlflow

    info = mlflow_store.register(small_pipeline, few_listings, "report")
    assert str(info.registered_model_version) == "1"
    return mlflow.pyfunc.load_model("models:/report/1")


@pytest.fixture(params=["fast-path", "pipeline"])
def priced_by(
    request: pytest.FixtureRequest, model: PyFuncModel, monkeypatch: pytest.MonkeyPatch
) -> PyFuncModel:
    """The model, pricing with its fast path or (fast path off) with the fitted pipeline."""
    served = model.unwrap_python_model()
    if request.param == "fast-path":
        assert served._fast is not None
    else:
        monkeypatch.setattr(served, "_fast", None)
    return model


@pytest.fixture
def clean(few_listings: pd.DataFrame) -> pd.DataFrame:
    """ROWS valid listings, distinct, with one above the training range of usable area."""
    rows = features(few_listings.sample(ROWS, random_state=5))
    rows.loc[6, "net_usable_area"] = few_listings["net_usable_area"].max() + 50
    return rows


def spoiled(clean: pd.DataFrame) -> pd.DataFrame:
    rows = clean.astype({"type": object, "sector": object})
    for row, (column, value) in SPOILED.items():
        rows.loc[row, column] = value
    return rows


VALID = [r for r in range(ROWS) if r not in SPOILED]


def test_a_report_has_one_row_per_listing_in_order(
    priced_by: PyFuncModel, clean: pd.DataFrame
) -> None:
    rows = spoiled(clean)
    rows.index = range(100, 100 + ROWS)

    answer = priced_by.predict(rows, params=REPORT)

    assert (
        list(answer.columns)
        == [PREDICTION_COLUMN, LOW_COLUMN, HIGH_COLUMN, FLAG_COLUMN, INVALID_COLUMN]
        == ["price", "price_low", "price_high", "outside_training_range", "invalid_reason"]
    )
    assert answer.index.tolist() == list(range(ROWS))
    invalid = answer[INVALID_COLUMN] != ""
    assert invalid.to_numpy().nonzero()[0].tolist() == sorted(SPOILED)


def test_valid_rows_are_priced_as_if_sent_alone(
    priced_by: PyFuncModel, clean: pd.DataFrame
) -> None:
    alone = priced_by.predict(clean.loc[VALID].reset_index(drop=True))

    answer = priced_by.predict(spoiled(clean), params=REPORT)

    valid = answer.loc[VALID].reset_index(drop=True)
    for column in (PREDICTION_COLUMN, LOW_COLUMN, HIGH_COLUMN):
        np.testing.assert_array_equal(valid[column].to_numpy(), alone[column].to_numpy())
    assert (valid[LOW_COLUMN] < valid[PREDICTION_COLUMN]).all()
    assert (valid[PREDICTION_COLUMN] < valid[HIGH_COLUMN]).all()
    assert valid[FLAG_COLUMN].tolist() == alone[FLAG_COLUMN].tolist()
    assert "net_usable_area" in valid[FLAG_COLUMN].tolist()  # row 6, above the training range
    assert valid[INVALID_COLUMN].tolist() == [""] * len(VALID)
    assert np.isfinite(valid[PREDICTION_COLUMN]).all()
    # Distinct listings, distinct prices: a shift of rows would not go unseen.
    assert valid[PREDICTION_COLUMN].nunique() > len(VALID) // 2


def test_invalid_rows_have_no_price_and_a_reason_naming_the_field(
    priced_by: PyFuncModel, clean: pd.DataFrame
) -> None:
    answer = priced_by.predict(spoiled(clean), params=REPORT)

    for row, (column, _) in SPOILED.items():
        assert answer.loc[row, [PREDICTION_COLUMN, LOW_COLUMN, HIGH_COLUMN]].isna().all(), row
        assert answer.loc[row, FLAG_COLUMN] == "", row
        reason = answer.loc[row, INVALID_COLUMN]
        assert reason.startswith(f"{column} "), (row, reason)
        assert "row" not in reason, reason
    rooms = NUMERIC_BY_NAME["n_rooms"]
    assert answer.loc[1, INVALID_COLUMN] == (
        f"n_rooms must be from {rooms.allowed()} (got {rooms.minimum - 1:g})"
    )
    assert answer.loc[8, INVALID_COLUMN].startswith("sector 'Marte' is unknown; known: ")


def test_a_clean_batch_is_priced_as_in_reject_mode(
    priced_by: PyFuncModel, clean: pd.DataFrame
) -> None:
    rejected = priced_by.predict(clean)

    answer = priced_by.predict(clean, params=REPORT)

    assert answer[INVALID_COLUMN].tolist() == [""] * ROWS
    pd.testing.assert_frame_equal(answer.drop(columns=INVALID_COLUMN), rejected)
    assert answer.loc[6, FLAG_COLUMN] == "net_usable_area"


def test_a_batch_of_invalid_rows_gives_every_row_a_reason(
    model: PyFuncModel, clean: pd.DataFrame
) -> None:
    rows = clean.assign(n_rooms=-1.0)

    answer = model.predict(rows, params=REPORT)

    assert len(answer) == ROWS
    assert answer[PREDICTION_COLUMN].isna().all()
    assert answer[FLAG_COLUMN].tolist() == [""] * ROWS
    assert all(r.startswith("n_rooms must be from ") for r in answer[INVALID_COLUMN])


def test_an_unknown_sector_is_priced_and_flagged_on_request(
    model: PyFuncModel, clean: pd.DataFrame
) -> None:
    rows = spoiled(clean)
    expected = rows.loc[[r for r in range(ROWS) if r not in SPOILED or r == 8]]
    alone = model.predict(expected.reset_index(drop=True), params={"on_unknown_category": "flag"})

    answer = model.predict(rows, params={**REPORT, "on_unknown_category": "flag"})

    assert answer.loc[8, INVALID_COLUMN] == ""
    assert answer.loc[8, FLAG_COLUMN] == "sector"
    assert (answer[INVALID_COLUMN] != "").sum() == len(SPOILED) - 1
    priced = answer.loc[expected.index].reset_index(drop=True)
    np.testing.assert_array_equal(
        priced[PREDICTION_COLUMN].to_numpy(), alone[PREDICTION_COLUMN].to_numpy()
    )
    assert priced[FLAG_COLUMN].tolist() == alone[FLAG_COLUMN].tolist()


def test_reject_mode_still_refuses_the_batch(model: PyFuncModel, clean: pd.DataFrame) -> None:
    with pytest.raises(InvalidInputError, match=r"n_rooms must be from .* \(row 1, got -1\)"):
        model.predict(spoiled(clean), params={"on_invalid_row": "reject"})


def test_a_missing_column_still_refuses_the_batch(model: PyFuncModel, clean: pd.DataFrame) -> None:
    rows = spoiled(clean).drop(columns=["net_area"])

    with pytest.raises(InvalidInputError) as caught:
        model.predict(rows, params=REPORT)

    assert caught.value.message == "Invalid input (net_area): net_area is a required column"


def test_an_unknown_category_policy_still_refuses_the_batch(
    model: PyFuncModel, clean: pd.DataFrame
) -> None:
    with pytest.raises(InvalidInputError, match="on_unknown_category must be one of"):
        model.predict(clean, params={**REPORT, "on_unknown_category": "guess"})


@pytest.mark.parametrize("policy", ["skip", "REPORT", ""])
def test_an_unknown_on_invalid_row_is_refused_by_name(
    model: PyFuncModel, clean: pd.DataFrame, policy: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        model.predict(clean, params={"on_invalid_row": policy})

    assert caught.value.message == (
        "Invalid input (on_invalid_row): on_invalid_row must be one of reject, report, "
        f"got {policy!r}"
    )
    assert caught.value.json_kwargs == {
        "errors": [
            {
                "field": "on_invalid_row",
                "row": None,
                "message": f"on_invalid_row must be one of reject, report, got {policy!r}",
            }
        ]
    }
