"""POST /outcomes in process, the prediction store (a real SQLite file) and the live-accuracy
gauges: validation with exact messages, each outcome's status, the writer's batches."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest

from gateway import outcomes
from gateway.app import create_app, gateway_of
from gateway.errors import GatewayError
from gateway.store import PredictionWriter, Store, StoreError, prediction_rows
from gateway.upstream import UpstreamAnswer
from pyfunc.schema import example_listing
from tests.support.gateway import ALICE_KEY, gateway_settings

AUTH = {"X-API-Key": ALICE_KEY}
TODAY = dt.date(2026, 12, 7)
BODY = 'Invalid input (body): the body must be {"outcomes": [...]}'
LIST = "Invalid input (outcomes): outcomes must be a list of 1 to 1000"
GOOD = {"request_id": "r-1", "row": 0, "price": 12000.5, "date": "2026-11-30"}


@pytest.fixture
def app(tmp_path):
    app = create_app(gateway_settings(tmp_path))
    yield app
    gateway_of(app).close()


@pytest.fixture
def client(app, monkeypatch):
    """A client of the app whose model server prices row i at 1000 * (i + 1) UF."""

    def predict(body: bytes, content_type: str, request_id: str):
        rows = len(orjson.loads(body)["inputs"]["type"])
        answer = {
            "predictions": [
                {"price": 1000.0 * (i + 1), "price_low": 800.0 * (i + 1),
                 "price_high": 1250.0 * (i + 1), "outside_training_range": ""}
                for i in range(rows)
            ]
        }  # fmt: skip
        return UpstreamAnswer(200, orjson.dumps(answer), "application/json", 0.001), "7"

    monkeypatch.setattr(gateway_of(app).pool, "predict", predict)
    return app.test_client()


def value(app, request_id: str | None = None, listing_ids: list[str] | None = None, rows=1):
    """Price `rows` listings; the answer's request id, once the rows are in the store."""
    payload: dict = {"dataframe_records": [example_listing()] * rows}
    if listing_ids is not None:
        payload["listing_ids"] = listing_ids
    headers = {**AUTH, **({"X-Request-ID": request_id} if request_id else {})}
    answer = app.test_client().post("/invocations", json=payload, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    gateway_of(app).request_log.flush()
    assert gateway_of(app).predictions.flush(timeout=10)
    return answer.headers["X-Request-ID"]


def post_outcomes(client, items, headers=AUTH):
    return client.post("/outcomes", json={"outcomes": items}, headers=headers)


def statuses(answer) -> list[str]:
    return [r["status"] for r in answer.get_json()["results"]]


@pytest.mark.parametrize(
    ("item", "field", "message"),
    [
        ({**GOOD, "price": "12000"}, "price",
         "price must be a number, the realized price in UF, got str '12000' (outcome 0)"),
        ({**GOOD, "price": True}, "price",
         "price must be a number, the realized price in UF, got bool 'True' (outcome 0)"),
        ({**GOOD, "price": 10}, "price",
         "price must be between 1000 and 1e+06 UF, got 10 (outcome 0)"),
        ({**GOOD, "date": "30/11/2026"}, "date",
         "date must be a date as YYYY-MM-DD, got str '30/11/2026' (outcome 0)"),
        ({**GOOD, "date": "2027-01-01"}, "date",
         "date must be between 2000-01-01 and today, got 2027-01-01 (outcome 0)"),
        ({k: v for k, v in GOOD.items() if k != "date"}, "date",
         "date must be a date as YYYY-MM-DD, got nothing (outcome 0)"),
        ({**GOOD, "row": -1}, "row",
         "row must be an integer >= 0, the listing's row in the request, got int '-1' (outcome 0)"),
        ({**GOOD, "row": None}, "row",
         "row must be an integer >= 0, the listing's row in the request, got nothing (outcome 0)"),
        ({**GOOD, "request_id": "a b"}, "request_id",
         "request_id must be the X-Request-ID of the valuation (outcome 0)"),
        ({"price": 12000, "date": "2026-11-30"}, "request_id",
         "request_id (with row) or listing_id is required (outcome 0)"),
        ({**GOOD, "listing_id": "L-1"}, "listing_id",
         "send either request_id and row, or listing_id, not both (outcome 0)"),
        ({"listing_id": "", "price": 12000, "date": "2026-11-30"}, "listing_id",
         "listing_id must be a string of 1 to 128 chars (outcome 0)"),
        ({"listing_id": None, "price": 12000, "date": "2026-11-30"}, "listing_id",
         "listing_id must be a string of 1 to 128 chars (outcome 0)"),
        ({**GOOD, "listing_id": None}, "listing_id",
         "send either request_id and row, or listing_id, not both (outcome 0)"),
        ({"request_id": None, "row": 0, "price": 12000, "date": "2026-11-30"}, "request_id",
         "request_id must be the X-Request-ID of the valuation (outcome 0)"),
        ({**GOOD, "sold": True}, "sold",
         "unknown field 'sold'; allowed: request_id, row, listing_id, price, date (outcome 0)"),
        ([GOOD], "outcome", "an outcome must be an object, got list (outcome 0)"),
    ],
)  # fmt: skip
def test_each_malformed_outcome_is_named_by_field_and_outcome(item, field, message):
    with pytest.raises(GatewayError) as raised:
        outcomes.validate_outcomes({"outcomes": [GOOD, item]}, TODAY)
    error = raised.value
    assert (error.code, error.status) == ("INVALID_OUTCOMES", 400)
    assert error.errors == [{"field": field, "row": 1, "message": message.replace("0)", "1)")}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([GOOD], BODY),
        ({"outcomes": [GOOD], "x": 1}, BODY),
        ({"outcomes": []}, f"{LIST}, got 0 outcomes"),
        ({"outcomes": [GOOD] * 1001}, f"{LIST}, got 1001 outcomes"),
        ({"outcomes": {"a": 1}}, f"{LIST}, got dict"),
    ],
)  # fmt: skip
def test_a_malformed_body_is_refused_whole(body, message):
    with pytest.raises(GatewayError) as raised:
        outcomes.validate_outcomes(body, TODAY)
    assert raised.value.message == message


def test_a_valid_outcome_is_kept_as_sent():
    (checked,) = outcomes.validate_outcomes({"outcomes": [GOOD]}, TODAY)
    assert checked == outcomes.Outcome("r-1", 0, None, 12000.5, "2026-11-30")


def test_outcomes_are_created_duplicated_corrected_or_unknown(app, client):
    request_id = value(app, rows=2)
    first = [
        {"request_id": request_id, "row": 1, "price": 2100, "date": "2026-11-30"},
        {"request_id": request_id, "row": 2, "price": 2100, "date": "2026-11-30"},  # no row 2
        {"request_id": "never-sent", "row": 0, "price": 2100, "date": "2026-11-30"},
    ]
    answer = post_outcomes(client, first)
    assert answer.status_code == 200
    assert answer.get_json() | {"results": None} == {
        "created": 1, "duplicate": 0, "corrected": 0, "unknown": 2, "results": None
    }  # fmt: skip
    assert statuses(answer) == ["created", "unknown", "unknown"]
    again = post_outcomes(client, [first[0], {**first[0], "price": 2300}])
    assert statuses(again) == ["duplicate", "corrected"]
    stored = gateway_of(app).store.run(
        lambda execute: execute("SELECT row_index, price, revisions, key_id FROM outcomes")
    )
    assert stored == [(1, 2300.0, 1, "alice")]


def test_a_listing_id_names_the_latest_valuation_of_that_listing(app, client):
    value(app, "older", listing_ids=["L-9"])
    value(app, "newer", listing_ids=["L-9"])
    answer = post_outcomes(client, [{"listing_id": "L-9", "price": 1500, "date": "2026-12-01"}])
    assert answer.get_json()["results"] == [
        {"status": "created", "request_id": "newer", "row": 0, "listing_id": "L-9"}
    ]


def test_the_store_keeps_each_priced_row_with_its_version_sector_and_range(app, client):
    request_id = value(app, listing_ids=["A", "B"], rows=2)
    rows = gateway_of(app).store.run(
        lambda execute: execute(
            "SELECT request_id, row_index, listing_id, key_id, model_version, sector, price, "
            "price_low, price_high FROM predictions ORDER BY row_index"
        )
    )
    sector = example_listing()["sector"]
    assert rows == [
        (request_id, 0, "A", "alice", "7", sector, 1000.0, 800.0, 1250.0),
        (request_id, 1, "B", "alice", "7", sector, 2000.0, 1600.0, 2500.0),
    ]


@pytest.mark.parametrize(
    ("listing_ids", "row", "message"),
    [
        (["A"], None, "listing_ids must be a list of 2 strings, one per row; got 1 ids"),
        (None, None, "listing_ids must be a list of 2 strings, one per row; got no list"),
        (["A", 7], 1, "listing_ids must be strings of 1 to 128 characters (row 1, got int)"),
    ],
)
def test_listing_ids_must_be_one_string_per_row(client, listing_ids, row, message):
    payload = {"dataframe_records": [example_listing()] * 2, "listing_ids": listing_ids}
    answer = client.post("/invocations", json=payload, headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["errors"] == [{"field": "listing_ids", "row": row, "message": message}]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"outcomes": [', {**AUTH, "Content-Type": "application/json"}, 400, "INVALID_JSON"),
        (b"{}", {**AUTH, "Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b'{"outcomes": []}', {"Content-Type": "application/json"}, 401, "MISSING_API_KEY"),
    ],
)  # fmt: skip
def test_outcomes_answer_like_invocations(client, body, headers, status, code):
    answer = client.post("/outcomes", data=body, headers=headers)
    assert (answer.status_code, answer.get_json()["error_code"]) == (status, code)
    assert answer.get_json()["request_id"] == answer.headers["X-Request-ID"]


def test_an_unreachable_store_is_a_503_and_nothing_else(tmp_path):
    (tmp_path / "file").write_text("")  # a file where the database's folder should be
    app = create_app(
        gateway_settings(tmp_path, PREDICTION_STORE_URL=f"sqlite:///{tmp_path}/file/p.db")
    )
    try:
        answer = post_outcomes(app.test_client(), [GOOD])
        assert answer.status_code == 503
        assert answer.get_json()["error_code"] == "STORE_UNAVAILABLE"
    finally:
        gateway_of(app).close()


def test_the_writer_keeps_rows_while_the_store_fails_and_writes_them_after(tmp_path):
    (tmp_path / "db").write_text("")  # not a folder yet: every write fails
    lost: list[int] = []
    writer = PredictionWriter(Store(f"sqlite:///{tmp_path}/db/p.db"), on_lost=lost.append)
    try:
        writer.add(prediction_rows("r", "k", "2026-12-01T00:00:00.000Z", "3", ["vitacura"] * 3,
                                   None, [{"price": 1000.0 + i} for i in range(3)]))  # fmt: skip
        assert not writer.flush(timeout=0.5)
        (tmp_path / "db").unlink()
        (tmp_path / "db").mkdir()
        assert writer.flush(timeout=10)
    finally:
        writer.close()
    stored = Store(f"sqlite:///{tmp_path}/db/p.db").run(
        lambda execute: execute("SELECT row_index, price FROM predictions ORDER BY row_index")
    )
    assert (stored, lost) == ([(0, 1000.0), (1, 1001.0), (2, 1002.0)], [])


def test_prediction_rows_skip_rows_without_a_finite_price_and_normalize_the_sector():
    rows = prediction_rows(
        "r", None, "t", "3", ["Las  Condes", "vitacura"], ["a", "b"],
        [{"price": 5000, "price_low": 4000, "price_high": None}, {"price": None}],
    )  # fmt: skip
    assert rows == [("r", 0, "a", "t", None, "3", "las condes", 5000.0, 4000.0, None)]


def test_an_unknown_store_url_is_refused():
    with pytest.raises(StoreError, match="must start with sqlite:/// or postgresql://"):
        Store("mysql://x")


def test_live_accuracy_rows_are_exposed_as_gauges(app):
    store = gateway_of(app).store
    rows = [
        ("4", "all", "model_live_mae_uf", 1234.5),
        ("4", "vitacura", "model_live_mae_uf", 999.0),
        ("4", "", "model_test_mae_uf", 800.0),
        ("", "", "model_live_min_outcomes", 30.0),
        ("4", "all", "not_a_gauge_we_know", 1.0),
    ]
    store.run(
        lambda execute: execute(
            "INSERT INTO live_accuracy VALUES (%s, %s, %s, %s, '2026-12-07')", rows, many=True
        )
    )
    registry = gateway_of(app).metrics.registry
    assert registry.get_sample_value("model_live_mae_uf", {"version": "4", "sector": "all"}) == (
        1234.5
    )
    assert registry.get_sample_value("model_live_mae_uf", {"version": "4", "sector": "vitacura"})
    assert registry.get_sample_value("model_test_mae_uf", {"version": "4"}) == 800.0
    assert registry.get_sample_value("model_live_min_outcomes") == 30.0
    assert (
        registry.get_sample_value("not_a_gauge_we_know", {"version": "4", "sector": "all"}) is None
    )
