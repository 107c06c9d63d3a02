"""The promoted model behind MLflow's real scoring server: predictions and clean 400s."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import requests

from pyfunc.schema import FEATURE_NAMES, example_listing

pytestmark = pytest.mark.integration


def invoke(server, body: dict) -> requests.Response:
    return requests.post(
        f"{server.url}/invocations",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def listings(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = example_listing()
        row["net_usable_area"] = 60.0 + 20 * i
        rows.append(row)
    return rows


def test_served_predictions_equal_in_process_predictions(model_server):
    rows = listings(5)
    response = invoke(model_server, {"dataframe_records": rows})
    assert response.status_code == 200, response.text
    answer = pd.DataFrame(response.json()["predictions"])
    served = answer["price"].tolist()
    info = json.loads(model_server.info_path.read_text())
    mlflow.set_tracking_uri(model_server.env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(info["uri"])
    local = model.predict(pd.DataFrame(rows)[list(FEATURE_NAMES)])
    pd.testing.assert_frame_equal(answer, local, rtol=1e-9)
    assert list(answer.columns) == ["price", "price_low", "price_high", "outside_training_range"]
    assert served == sorted(served), "more usable area must not lower the price"


def test_all_three_json_formats_agree(model_server):
    rows = listings(3)
    split = {"columns": list(rows[0]), "data": [list(r.values()) for r in rows]}
    inputs = {k: [r[k] for r in rows] for k in rows[0]}
    answers = [
        invoke(model_server, body).json()["predictions"]
        for body in ({"dataframe_records": rows}, {"dataframe_split": split}, {"inputs": inputs})
    ]
    assert answers[0] == answers[1] == answers[2]


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        (
            {"net_area": -5},
            "net_area",
            "net_area must be from 10 to 200000 m2, or 0 if not reported (row 1, got -5)",
        ),
        ({"net_area": None}, "net_area", "net_area must be a finite number (row 1, got nan)"),
        ({"sector": "marte"}, "sector", "sector 'marte' is unknown (row 1); known:"),
        (
            {"n_bathroom": -1},
            "n_bathroom",
            "n_bathroom must be from 1 to 20, or 0 if not reported (row 1, got -1)",
        ),
        (
            {"net_usable_area": 0, "net_area": 0},
            "net_usable_area",
            "net_usable_area must be from 10 to 5000 m2 (row 1, got 0)",
        ),
    ],
)
def test_invalid_input_is_400_with_only_the_validation_message(
    model_server, change, field, expected
):
    rows = listings(2)
    rows[1].update(change)
    response = invoke(model_server, {"dataframe_records": rows})
    assert response.status_code == 400
    body = response.json()
    assert expected in body["message"]
    assert body["errors"][0]["field"] == field and body["errors"][0]["row"] == 1
    assert "Failed to predict" not in body["message"] and "stack_trace" not in body


def test_every_missing_and_bad_field_is_named_in_one_answer(model_server):
    row = example_listing()
    del row["longitude"]
    row["latitude"] = 10.0
    response = invoke(model_server, {"dataframe_records": [row]})
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {"longitude", "latitude"}


def test_unknown_sector_can_be_flagged_instead_of_rejected(model_server):
    row = {**example_listing(), "sector": "Marte"}
    body = {"dataframe_records": [row], "params": {"on_unknown_category": "flag"}}
    response = invoke(model_server, body)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["outside_training_range"] == "sector"


def test_values_not_reported_are_priced_and_flagged(model_server):
    rows = listings(3)
    rows[1]["n_bathroom"] = 0
    rows[2]["net_area"] = 0
    response = invoke(model_server, {"dataframe_records": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["outside_training_range"] for p in predictions] == ["", "n_bathroom", "net_area"]
    assert all(p["price"] > 0 for p in predictions)
