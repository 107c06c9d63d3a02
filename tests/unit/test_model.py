"""The served pyfunc model, in process: logged to a throw-away store, loaded back, then probed.

Behavioural tests in the Made-With-ML sense: invariance (spelling of a category does not change
the price), direction (more usable area never lowers it), and the unknown sector as a decision.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from pyfunc.contract import FieldError, ValidationError
from pyfunc.model import ENTRY, InvalidInputError
from pyfunc.profile import REFERENCE_BINS, build_profile
from pyfunc.schema import (
    CATEGORICAL_NAMES,
    FEATURE_NAMES,
    FLAG_COLUMN,
    HIGH_COLUMN,
    LOW_COLUMN,
    NUMERIC_NAMES,
    PREDICTION_COLUMN,
    TARGET,
)
from steps.params import Candidate, Preset
from steps.train import build_pipeline
from tests.support.imports import import_graph, module_name, reachable
from tests.support.mlflow_store import HIGH_FACTOR, LOW_FACTOR, Store

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo
    from mlflow.pyfunc import PyFuncModel
    from sklearn.pipeline import Pipeline

# The default preset's shape: engineered features, log target, and the monotonic constraint
# on usable area that the direction test relies on. Leaves of a single row make the forest
# as rough as it gets: without the constraint it prices some listings lower for more area.
SERVED = Preset(
    "served",
    engineered_features=True,
    log_target=True,
    candidates=(Candidate("RandomForestRegressor", {}),),
    monotonic={"net_usable_area": 1},
)
ROOT = Path(__file__).resolve().parents[2]
AREA_STEPS = 30  # usable areas swept, evenly on a log scale across the training range


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(FEATURE_NAMES)].reset_index(drop=True)


@pytest.fixture(scope="module")
def pipeline(listings: pd.DataFrame) -> Pipeline:
    pipeline = build_pipeline(SERVED, seed=0).set_params(
        model__regressor__n_estimators=60, model__regressor__min_samples_leaf=1
    )
    return pipeline.fit(features(listings), listings[TARGET.name])


@pytest.fixture(scope="module")
def logged(mlflow_store: Store, pipeline: Pipeline, listings: pd.DataFrame) -> ModelInfo:
    info = mlflow_store.register(pipeline, listings, "served")
    assert str(info.registered_model_version) == "1"
    return info


@pytest.fixture(scope="module")
def model(logged: ModelInfo) -> PyFuncModel:
    import mlflow

    return mlflow.pyfunc.load_model("models:/served/1")


@pytest.fixture(scope="module")
def known_sectors(listings: pd.DataFrame) -> str:
    return ", ".join(sorted(listings["sector"].unique()))


def test_a_logged_version_holds_exactly_the_modules_pricing_imports(logged: ModelInfo) -> None:
    code = Store.model_files(logged) / "code"
    held = {module_name(path, code) for path in code.rglob("*.py")}
    # the entry's own file is stored beside MLmodel (model from code), not under code/
    entry = module_name(ENTRY, ROOT)
    pricing = reachable(import_graph(ROOT, ("pyfunc",)), entry) - {entry}

    assert {"pyfunc", "pyfunc.model", "pyfunc.validation", "pyfunc.compiled"} <= pricing
    assert not {"pyfunc.drift", "pyfunc.profile"} & pricing
    assert held == pricing
    assert [p.name for p in code.iterdir()] == ["pyfunc"]


def test_one_price_its_range_and_one_flag_per_row(
    model: PyFuncModel, pipeline: Pipeline, listings: pd.DataFrame
) -> None:
    rows = features(listings.sample(25, random_state=1))

    answer = model.predict(rows)

    assert (
        list(answer.columns)
        == [PREDICTION_COLUMN, LOW_COLUMN, HIGH_COLUMN, FLAG_COLUMN]
        == ["price", "price_low", "price_high", "outside_training_range"]
    )
    assert answer.index.tolist() == list(range(25))
    prices = pipeline.predict(rows)
    np.testing.assert_allclose(answer[PREDICTION_COLUMN], prices)
    np.testing.assert_allclose(answer[LOW_COLUMN], prices * LOW_FACTOR)
    np.testing.assert_allclose(answer[HIGH_COLUMN], prices * HIGH_FACTOR)
    assert answer[FLAG_COLUMN].tolist() == [""] * 25


def test_the_signature_lists_the_range(model: PyFuncModel) -> None:
    outputs = model.metadata.get_output_schema().input_names()

    assert outputs == ["price", "price_low", "price_high", "outside_training_range"]


@pytest.mark.parametrize(
    ("column", "spellings"),
    [
        pytest.param(
            "sector",
            ["las condes", "Las Condes", "LAS CONDES", "  las   condes ", "Lás Cóndes"],
            id="las-condes",
        ),
        pytest.param("sector", ["nunoa", "Ñuñoa", "ÑUÑOA", "ñuñoa "], id="nunoa"),
        pytest.param("type", ["casa", "Casa", "CASA", " casa\t"], id="casa"),
        pytest.param("type", ["departamento", "Departamento", "DEPARTAMENTO"], id="departamento"),
    ],
)
def test_spelling_of_a_category_does_not_change_the_price(
    model: PyFuncModel, listings: pd.DataFrame, column: str, spellings: list[str]
) -> None:
    rows = features(listings.head(1)).loc[[0] * len(spellings)].reset_index(drop=True)
    rows[column] = spellings

    answer = model.predict(rows)

    assert answer[PREDICTION_COLUMN].nunique() == 1
    assert answer[FLAG_COLUMN].tolist() == [""] * len(spellings)


@pytest.mark.parametrize("kind", ["casa", "departamento"])
def test_more_usable_area_never_lowers_the_price(
    model: PyFuncModel, listings: pd.DataFrame, kind: str
) -> None:
    low, high = listings["net_usable_area"].min(), listings["net_usable_area"].max()
    areas = np.geomspace(low, high, AREA_STEPS)
    for _, listing in features(listings[listings["type"] == kind].head(20)).iterrows():
        sweep = pd.DataFrame([listing] * len(areas)).reset_index(drop=True)
        sweep["net_usable_area"] = areas

        answer = model.predict(sweep)

        prices = answer[PREDICTION_COLUMN].to_numpy()
        assert answer[FLAG_COLUMN].tolist() == [""] * len(areas)
        assert (np.diff(prices) >= 0).all(), dict(zip(areas, prices, strict=True))
        assert prices[-1] > 1.5 * prices[0], dict(zip(areas, prices, strict=True))


def test_an_unknown_sector_is_refused_with_the_known_ones(
    model: PyFuncModel, listings: pd.DataFrame, known_sectors: str
) -> None:
    rows = features(listings.head(3))
    rows.loc[1, "sector"] = "Marte"

    with pytest.raises(MlflowException) as caught:
        model.predict(rows)

    message = f"sector 'Marte' is unknown (row 1); known: {known_sectors}"
    assert caught.value.message == f"Invalid input (sector): {message}"
    assert caught.value.json_kwargs == {
        "errors": [{"field": "sector", "row": 1, "message": message}]
    }
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert caught.value.get_http_status_code() == 400


def test_a_fractional_number_of_rooms_is_refused_naming_field_and_row(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.head(3))
    rows.loc[1, "n_rooms"] = 2.5

    with pytest.raises(InvalidInputError) as caught:
        model.predict(rows)

    message = "n_rooms must be a whole number (row 1, got 2.5)"
    assert caught.value.message == f"Invalid input (n_rooms): {message}"
    assert caught.value.json_kwargs == {
        "errors": [{"field": "n_rooms", "row": 1, "message": message}]
    }


def test_an_unknown_sector_is_priced_and_flagged_on_request(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.head(3))
    known = model.predict(rows)
    rows.loc[1, "sector"] = "Marte"

    answer = model.predict(rows, params={"on_unknown_category": "flag"})

    assert answer[FLAG_COLUMN].tolist() == ["", "sector", ""]
    assert np.isfinite(answer.loc[1, PREDICTION_COLUMN])
    assert answer.loc[1, PREDICTION_COLUMN] > 0
    pd.testing.assert_series_equal(
        answer.loc[[0, 2], PREDICTION_COLUMN], known.loc[[0, 2], PREDICTION_COLUMN]
    )


def test_an_unknown_policy_is_refused(model: PyFuncModel, listings: pd.DataFrame) -> None:
    with pytest.raises(
        MlflowException, match="on_unknown_category must be one of reject, flag, got 'guess'"
    ):
        model.predict(features(listings.head(1)), params={"on_unknown_category": "guess"})


def test_values_outside_the_training_range_are_priced_and_flagged(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.head(2))
    rows.loc[1, "net_usable_area"] = listings["net_usable_area"].max() + 100

    answer = model.predict(rows)

    assert answer[FLAG_COLUMN].tolist() == ["", "net_usable_area"]
    assert (answer[PREDICTION_COLUMN] > 0).all()


@pytest.mark.parametrize("on_invalid_row", ["reject", "report"])
def test_unreported_bathrooms_and_net_area_are_priced_and_flagged(
    model: PyFuncModel, pipeline: Pipeline, listings: pd.DataFrame, on_invalid_row: str
) -> None:
    rows = features(listings.head(4))
    rows.loc[1, "n_bathroom"] = 0
    rows.loc[2:3, "net_area"] = 0
    rows.loc[3, "n_bathroom"] = 0

    answer = model.predict(rows, params={"on_invalid_row": on_invalid_row})

    assert answer[FLAG_COLUMN].tolist() == ["", "n_bathroom", "net_area", "net_area,n_bathroom"]
    np.testing.assert_allclose(answer[PREDICTION_COLUMN], pipeline.predict(rows), rtol=1e-9)


def test_a_usable_area_of_zero_is_refused_naming_the_field(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.head(2)).assign(net_area=0.0)
    rows.loc[1, "net_usable_area"] = 0

    with pytest.raises(InvalidInputError) as caught:
        model.predict(rows)

    assert caught.value.json_kwargs == {
        "errors": [
            {
                "field": "net_usable_area",
                "row": 1,
                "message": "net_usable_area must be from 10 to 5000 m2 (row 1, got 0)",
            }
        ]
    }


def test_a_missing_column_is_named_by_the_model_not_by_mlflow(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    with pytest.raises(MlflowException) as caught:
        model.predict(features(listings.head(2)).drop(columns=["net_area"]))

    assert caught.value.message == "Invalid input (net_area): net_area is a required column"


def parsed_inputs(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns as MLflow's scoring server parses an `inputs` body (no input schema)."""
    return {name: np.array(rows[name].tolist()) for name in rows.columns}


def test_columns_of_an_inputs_body_are_answered_as_the_frame_records(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.sample(5, random_state=2))

    answer = model.predict(parsed_inputs(rows))

    assert answer == model.predict(rows).to_dict(orient="records")
    assert all(type(r[PREDICTION_COLUMN]) is float for r in answer)


def test_records_of_an_inputs_body_are_priced_like_the_frame(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.sample(3, random_state=3))
    parsed = [{k: np.array(v) for k, v in r.items()} for r in rows.to_dict(orient="records")]

    answer = model.predict(parsed)

    pd.testing.assert_frame_equal(answer, model.predict(rows))


def test_bad_columns_of_an_inputs_body_get_the_validators_message(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    columns = parsed_inputs(features(listings.head(2)))
    columns["n_rooms"] = np.array(["3", "x"])  # strings are not coerced to numbers

    with pytest.raises(MlflowException) as caught:
        model.predict(columns)

    assert [e["field"] for e in caught.value.json_kwargs["errors"]] == ["n_rooms", "n_rooms"]


def test_inputs_columns_of_different_lengths_are_refused_by_name(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    columns = parsed_inputs(features(listings.head(2)))
    columns["net_area"] = columns["net_area"][:1]

    with pytest.raises(MlflowException) as caught:
        model.predict(columns)

    assert caught.value.message == (
        "Invalid input (inputs): inputs must hold one list of values per feature, "
        "all of the same length"
    )


def test_inputs_columns_of_single_values_are_refused_by_name(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    row = features(listings.head(1))
    scalars = {name: np.array(row[name].iloc[0]) for name in row.columns}

    with pytest.raises(MlflowException) as caught:
        model.predict(scalars)

    assert caught.value.json_kwargs["errors"][0]["field"] == "inputs"


def test_invalid_input_error_keeps_its_message_when_reassigned(
    model: PyFuncModel, listings: pd.DataFrame
) -> None:
    rows = features(listings.head(3))
    rows.loc[2, "n_bathroom"] = -1
    with pytest.raises(InvalidInputError) as caught:
        model.predict(rows)
    error = caught.value
    original = error.message

    # What MLflow's scoring server does before answering.
    error.message = f"Failed to predict data '{rows}'. \nError: {error.message}"

    problem = "n_bathroom must be from 1 to 20, or 0 if not reported (row 2, got -1)"
    assert error.message == original == f"Invalid input (n_bathroom): {problem}"
    answer = json.loads(error.serialize_as_json())
    assert answer["message"] == original
    assert answer["errors"] == [{"field": "n_bathroom", "row": 2, "message": problem}]


def test_invalid_input_error_carries_every_field_error() -> None:
    errors = [FieldError("sector", 0, "bad sector"), FieldError("net_area", None, "no column")]

    error = InvalidInputError(ValidationError(errors))

    assert error.message == "Invalid input (net_area, sector): bad sector; no column"
    assert error.json_kwargs == {"errors": [e.as_dict() for e in errors]}


def test_profile_describes_the_training_frame(listings: pd.DataFrame) -> None:
    profile = build_profile(listings)

    assert profile["rows"] == len(listings)
    assert profile["categories"] == {n: sorted(listings[n].unique()) for n in CATEGORICAL_NAMES}
    assert profile["ranges"] == {n: [listings[n].min(), listings[n].max()] for n in NUMERIC_NAMES}
    assert set(profile["reference"]) == set(FEATURE_NAMES)
    json.dumps(profile)


def test_profile_ranges_leave_out_values_not_reported(listings: pd.DataFrame) -> None:
    rows = listings.assign(n_bathroom=listings["n_bathroom"].where(listings.index % 2 == 0, 0))

    ranges = build_profile(rows)["ranges"]

    assert 0 in rows["n_bathroom"].tolist()
    assert ranges["n_bathroom"] == [
        rows["n_bathroom"][rows.index % 2 == 0].min(),
        rows["n_bathroom"].max(),
    ]


@pytest.mark.parametrize("name", NUMERIC_NAMES)
def test_numeric_reference_is_deciles_with_shares_summing_to_one(
    listings: pd.DataFrame, name: str
) -> None:
    reference = build_profile(listings)["reference"][name]

    edges, shares = np.array(reference["edges"]), np.array(reference["shares"])
    assert 1 <= len(edges) <= REFERENCE_BINS - 1
    assert (np.diff(edges) > 0).all()
    assert len(shares) == len(edges) + 1
    assert shares.sum() == pytest.approx(1.0)
    below = (listings[name] < edges[0]).mean()
    assert shares[0] == pytest.approx(below)


@pytest.mark.parametrize("name", CATEGORICAL_NAMES)
def test_categorical_reference_is_the_share_of_each_category(
    listings: pd.DataFrame, name: str
) -> None:
    shares = build_profile(listings)["reference"][name]["shares"]

    assert shares == pytest.approx(listings[name].value_counts(normalize=True).to_dict())
    assert list(shares) == sorted(shares)
    assert sum(shares.values()) == pytest.approx(1.0)
