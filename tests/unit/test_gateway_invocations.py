"""POST /invocations in process: size, content type, JSON, shape, upstream answers and failures.

The upstream is either a port where nothing listens (503) or a stub `predict` on the app's
Upstream object: no network, no model.
"""

from __future__ import annotations

import io

import orjson
import pytest

from gateway.app import create_app, gateway_of
from gateway.upstream import UpstreamAnswer
from pyfunc.schema import FEATURE_NAMES, example_listing
from tests.support.gateway import ALICE_KEY, gateway_settings, read_log, write_model_info

AUTH = {"X-API-Key": ALICE_KEY}
TERMINATED = {"wsgi.input_terminated": True}  # what gunicorn sets for a chunked body
ROW = example_listing()
ROW_VALUES = list(ROW.values())


@pytest.fixture
def app(tmp_path):
    app = create_app(gateway_settings(tmp_path, GATEWAY_MAX_BODY_BYTES="2000"))
    yield app
    gateway_of(app).close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def upstream_calls(app, monkeypatch):
    """Replace the model server by a stub that prices every row at 1000 * (row + 1) UF, from
    0.8 to 1.25 times that."""
    calls = []

    def predict(body: bytes, content_type: str, request_id: str) -> UpstreamAnswer:
        calls.append((body, content_type, request_id))
        payload = orjson.loads(body)
        rows = _row_count(payload)
        answer = {
            "predictions": [
                {
                    "price": 1000.0 * (i + 1),
                    "price_low": 800.0 * (i + 1),
                    "price_high": 1250.0 * (i + 1),
                    "outside_training_range": "",
                }
                for i in range(rows)
            ]
        }
        return UpstreamAnswer(200, orjson.dumps(answer), "application/json", 0.002)

    pool = gateway_of(app).pool
    monkeypatch.setattr(pool, "predict", lambda *a: (predict(*a), pool.version))
    return calls


def _row_count(payload: dict) -> int:
    if "dataframe_split" in payload:
        return len(payload["dataframe_split"]["data"])
    if "inputs" in payload:
        return len(payload["inputs"]["type"])
    return len(payload.get("dataframe_records") or payload["instances"])


def post(client, body, content_type="application/json", headers=None):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(
        "/invocations", data=data, content_type=content_type, headers={**AUTH, **(headers or {})}
    )


def sample(app, name: str, **labels: str) -> float:
    return gateway_of(app).metrics.registry.get_sample_value(name, labels) or 0.0


def test_body_over_limit_by_content_length_is_413(client):
    response = post(client, b"{" + b" " * 3000 + b"}")
    assert response.status_code == 413
    assert response.json["error_code"] == "PAYLOAD_TOO_LARGE"
    assert response.json["message"] == (
        "Content-Length is 3002 bytes; the gateway accepts at most 2000 bytes: split the batch"
    )


def test_chunked_body_over_limit_is_413(client):
    stream = io.BytesIO(b"{" + b" " * 3000 + b"}")
    response = client.post(
        "/invocations",
        input_stream=stream,
        headers={**AUTH, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides=TERMINATED,
    )
    assert response.status_code == 413
    assert response.json["message"].startswith("the body is larger; the gateway accepts at most")


def test_chunked_body_under_limit_is_read(client, upstream_calls):
    body = orjson.dumps({"dataframe_records": [ROW]})
    response = client.post(
        "/invocations",
        input_stream=io.BytesIO(body),
        headers={**AUTH, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides=TERMINATED,
    )
    assert response.status_code == 200
    assert orjson.loads(upstream_calls[0][0]) == {"inputs": {k: [v] for k, v in ROW.items()}}


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (None, "missing Content-Type: send the body as application/json"),
        ("text/plain", "Content-Type must be application/json, got 'text/plain'"),
        ("application/json; charset=latin-1", "only UTF-8 JSON is accepted, got charset 'latin-1'"),
    ],
)
def test_wrong_content_type_is_415(client, content_type, message):
    headers = {**AUTH} if content_type is None else {**AUTH, "Content-Type": content_type}
    response = client.post(
        "/invocations", data=orjson.dumps({"dataframe_records": [ROW]}), headers=headers
    )
    assert response.status_code == 415
    assert response.json == {
        "error_code": "UNSUPPORTED_MEDIA_TYPE",
        "message": message,
        "request_id": response.headers["X-Request-ID"],
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"dataframe_records": [', "invalid JSON at line 1 column 24: unexpected end of data"),
        (
            b'{"inputs": {"net_area": [NaN]}}',
            "invalid JSON at line 1 column 26: NaN and Infinity "
            "are not JSON numbers; send finite numbers",
        ),
        (
            b'{"inputs": {"net_area": [-Infinity]}}',
            "invalid JSON at line 1 column 27: NaN and "
            "Infinity are not JSON numbers; send finite "
            "numbers",
        ),
        (b"", 'empty body: send a JSON object such as {"dataframe_records": [...]}'),
    ],
)
def test_bad_json_is_400(client, body, message):
    response = post(client, body)
    assert response.status_code == 400
    assert response.json["error_code"] == "INVALID_JSON"
    assert response.json["message"] == message


def _records(**changes):
    return {"dataframe_records": [ROW, {**ROW, **changes}]}


def _without(name):
    return {"dataframe_records": [ROW, {k: v for k, v in ROW.items() if k != name}]}


def _split(rows):
    return {"dataframe_split": {"columns": list(FEATURE_NAMES), "data": rows}}


INVALID_BODIES = [
    (
        "number as string",
        _records(net_area="0.5"),
        "net_area",
        1,
        "net_area must be a number (row 1, got str '0.5')",
    ),
    (
        "bool as number",
        _records(n_rooms=True),
        "n_rooms",
        1,
        "n_rooms must be a number (row 1, got bool True)",
    ),
    (
        "number as category",
        _records(sector=5),
        "sector",
        1,
        "sector must be a string (row 1, got int 5)",
    ),
    ("null", _records(latitude=None), "latitude", 1, "latitude is missing (row 1, got null)"),
    (
        "missing key in a row",
        _without("n_bathroom"),
        "n_bathroom",
        1,
        "n_bathroom is missing (row 1)",
    ),
    (
        "extra nesting in a value",
        _records(net_usable_area=[140.0]),
        "net_usable_area",
        1,
        "net_usable_area must be a number (row 1, got list [140.0])",
    ),
    (
        "extra nesting of rows",
        {"dataframe_records": [[ROW]]},
        "dataframe_records",
        0,
        "dataframe_records row 0 must be an object of features, got list",
    ),
    (
        "split row too short",
        _split([list(ROW.values()), [1.0]]),
        "dataframe_split",
        1,
        "dataframe_split row 1 has 1 values for 8 columns",
    ),
    (
        "split null",
        _split([list(ROW.values()), [*list(ROW.values())[:-1], None]]),
        "longitude",
        1,
        "longitude is missing (row 1, got null)",
    ),
    (
        "split index not a list",
        {"dataframe_split": {**_split([ROW_VALUES])["dataframe_split"], "index": None}},
        "index",
        None,
        "dataframe_split.index, when sent, must be a list with one label per row of data",
    ),
    (
        "split index too short",
        {"dataframe_split": {**_split([ROW_VALUES] * 2)["dataframe_split"], "index": [0]}},
        "index",
        None,
        "dataframe_split.index, when sent, must be a list with one label per row of data",
    ),
    (
        "inputs string",
        {"inputs": {**{k: [v, v] for k, v in ROW.items()}, "net_area": [1, "2"]}},
        "net_area",
        1,
        "net_area must be a number (row 1, got str '2')",
    ),
]


@pytest.mark.parametrize(
    ("body", "field", "row", "message"),
    [case[1:] for case in INVALID_BODIES],
    ids=[case[0] for case in INVALID_BODIES],
)
def test_invalid_features_name_field_and_row(
    app, client, upstream_calls, body, field, row, message
):
    response = post(client, body)
    assert response.status_code == 400
    assert response.json["error_code"] == "INVALID_FEATURES"
    assert response.json["errors"] == [{"field": field, "row": row, "message": message}]
    assert message in response.json["message"]
    assert field in response.json["message"]
    assert not upstream_calls


def test_a_renamed_key_after_a_bad_value_is_named_not_a_server_error(client, upstream_calls):
    renamed = {k: v for k, v in ROW.items() if k != "net_area"} | {"garage": 1, "sector": 5}
    response = post(client, {"dataframe_records": [ROW, renamed]})
    assert response.status_code == 400
    assert response.json["errors"][0] == {
        "field": "net_area",
        "row": 1,
        "message": "net_area is missing (row 1)",
    }
    assert [(e["field"], e["row"]) for e in response.json["errors"]] == [
        ("net_area", 1),
        ("garage", 1),
    ]
    assert not upstream_calls


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"data": [ROW]},
            "data",
            "unknown top-level key(s) 'data'; send exactly one of: "
            "dataframe_split, dataframe_records, inputs, instances (and "
            "optionally params, listing_ids)",
        ),
        (
            {},
            "body",
            "send exactly one of: dataframe_split, dataframe_records, inputs, instances; got none",
        ),
        (
            {"dataframe_records": [ROW], "inputs": {}},
            "dataframe_records | inputs",
            "send exactly one of: dataframe_split, dataframe_records, inputs, instances; got "
            "dataframe_records and inputs",
        ),
        (
            [ROW],
            "body",
            "the body must be a JSON object with one of: dataframe_split, "
            "dataframe_records, inputs, instances",
        ),
        ({"dataframe_records": []}, "rows", "no rows to price"),
        (
            {"dataframe_split": {"columns": [*FEATURE_NAMES[:-1], "garage"], "data": []}},
            "longitude",
            "longitude is a required column",
        ),
        (
            {"dataframe_records": [ROW], "params": "flag"},
            "params",
            'params must be an object, e.g. {"on_unknown_category": "flag"}',
        ),
    ],
)
def test_wrong_envelope_is_invalid_features(client, body, field, message):
    response = post(client, body)
    assert response.status_code == 400
    assert response.json["error_code"] == "INVALID_FEATURES"
    assert response.json["errors"][0] == {"field": field, "row": None, "message": message}


def test_unknown_column_is_named(client):
    response = post(client, {"dataframe_records": [{**ROW, "garage": 1}]})
    assert response.status_code == 400
    assert response.json["errors"] == [
        {
            "field": "garage",
            "row": 0,
            "message": (
                "'garage' is not a feature (row 0; expected: type, sector, net_usable_area, "
                "net_area, n_rooms, n_bathroom, latitude, longitude)"
            ),
        }
    ]


def test_many_bad_rows_are_summarised(client):
    rows = [{**ROW, "net_area": str(i)} for i in range(8)]
    errors = post(client, {"dataframe_records": rows}).json["errors"]
    assert [e["row"] for e in errors] == [0, 1, 2, 3, 4, None]
    assert errors[-1]["message"] == "net_area: the same problem in 3 more rows"


def test_validation_errors_are_counted_by_field(app, client):
    post(client, _records(net_area="1", sector=2))
    post(client, {"dataframe_records": [{**ROW, "garage": 1}]})
    assert sample(app, "gateway_validation_errors_total", field="net_area") == 1
    assert sample(app, "gateway_validation_errors_total", field="sector") == 1
    assert sample(app, "gateway_validation_errors_total", field="other") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_records": [ROW, ROW]},
        {"instances": [ROW, ROW]},
        _split([list(ROW.values()), list(ROW.values())]),
        {"inputs": {k: [v, v] for k, v in ROW.items()}},
        {"dataframe_records": [ROW, ROW], "params": {"on_unknown_category": "flag"}},
    ],
)
def test_valid_body_is_forwarded_as_columns(tmp_path, app, client, upstream_calls, body):
    """Whatever the client's format, the model server gets the checked features as `inputs`
    columns (MLflow hands them to the model without building a DataFrame), and the params."""
    write_model_info(tmp_path / "served-model.json", version="7")
    gateway_of(app).model_info.refresh(force=True)
    raw = orjson.dumps(body)
    response = post(client, raw, headers={"X-Request-ID": "client-id-1"})
    assert response.status_code == 200
    assert response.json["predictions"][1] == {
        "price": 2000.0,
        "price_low": 1600.0,
        "price_high": 2500.0,
        "outside_training_range": "",
    }
    assert response.headers["X-Request-ID"] == "client-id-1"
    assert response.headers["X-Model-Version"] == "7"
    [(forwarded, content_type, request_id)] = upstream_calls
    columns = {k: [v, v] for k, v in ROW.items()}
    assert orjson.loads(forwarded) == {"inputs": columns} | (
        {"params": body["params"]} if "params" in body else {}
    )
    assert (content_type, request_id) == ("application/json", "client-id-1")
    assert sample(app, "gateway_rows_predicted_total") == 2


def test_insane_request_id_is_replaced(client, upstream_calls):
    response = post(client, {"dataframe_records": [ROW]}, headers={"X-Request-ID": "a b\x01"})
    assert response.headers["X-Request-ID"] != "a b\x01"
    assert len(response.headers["X-Request-ID"]) == 32


def test_success_is_logged_with_features_and_prices(tmp_path, app, client, upstream_calls):
    post(client, {"dataframe_records": [ROW, ROW]})
    gateway_of(app).request_log.flush()
    line = read_log(tmp_path / "requests.jsonl")[-1]
    assert line["status"] == 200
    assert line["rows"] == 2
    assert line["upstream_latency_ms"] == 2.0
    assert line["features"] == {name: [ROW[name], ROW[name]] for name in FEATURE_NAMES}
    assert line["predictions"] == [1000.0, 2000.0]
    assert line["price_low"] == [800.0, 1600.0]
    assert line["price_high"] == [1250.0, 2500.0]
    assert line["outside_training_range"] == ["", ""]
    assert sample(app, "gateway_predicted_price_uf_count", version="unknown") == 2
    assert sample(app, "gateway_predicted_price_uf_sum", version="unknown") == 3000.0


def test_payloads_are_not_logged_when_disabled(tmp_path, monkeypatch):
    app = create_app(gateway_settings(tmp_path, GATEWAY_LOG_PAYLOADS="false"))
    answer = UpstreamAnswer(200, b'{"predictions": [{"price": 5000.0}]}', "application/json", 0.001)
    monkeypatch.setattr(gateway_of(app).pool, "predict", lambda *args: (answer, "3"))
    assert post(app.test_client(), {"dataframe_records": [ROW]}).status_code == 200
    gateway_of(app).close()
    line = read_log(tmp_path / "requests.jsonl")[-1]
    assert "features" not in line
    assert "predictions" not in line
    registry = gateway_of(app).metrics.registry
    assert registry.get_sample_value("gateway_predicted_price_uf_count", {"version": "3"}) == 1


def test_upstream_down_is_503(tmp_path, app, client):
    response = post(client, {"dataframe_records": [ROW]})
    assert response.status_code == 503
    assert response.json["error_code"] == "UPSTREAM_UNAVAILABLE"
    assert response.content_type == "application/json"
    assert sample(app, "gateway_upstream_up") == 0
    gateway_of(app).request_log.flush()
    line = read_log(tmp_path / "requests.jsonl")[-1]
    assert {k: line[k] for k in ("path", "status", "error_code", "key_id", "rows")} == {
        "path": "/invocations",
        "status": 503,
        "error_code": "UPSTREAM_UNAVAILABLE",
        "key_id": "alice",
        "rows": 1,
    }


def test_model_validation_error_is_passed_on_clean(app, client, monkeypatch):
    model_error = {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Invalid input (net_area): net_area must be between 10 to 200000 m2 (row 0, "
        "got 5)",
        "errors": [
            {
                "field": "net_area",
                "row": 0,
                "message": "net_area must be between 10 to 200000 m2 (row 0, got 5)",
                "extra": "dropped",
            }
        ],
        "stack_trace": "Traceback (most recent call last): ...",
    }
    monkeypatch.setattr(
        gateway_of(app).pool,
        "predict",
        lambda *a: (UpstreamAnswer(400, orjson.dumps(model_error), "application/json", 0.001), "3"),
    )
    response = post(client, {"dataframe_records": [{**ROW, "net_area": 5}]})
    assert response.status_code == 400
    assert response.json == {
        "error_code": "INVALID_FEATURES",
        "message": model_error["message"],
        "errors": [{"field": "net_area", "row": 0, "message": model_error["errors"][0]["message"]}],
        "request_id": response.headers["X-Request-ID"],
    }
    assert sample(app, "gateway_validation_errors_total", field="net_area") == 1


def test_unexpected_exception_is_502_json(app, client, monkeypatch, caplog):
    def explode(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(gateway_of(app).pool, "predict", explode)
    response = post(client, {"dataframe_records": [ROW]})
    assert response.status_code == 502
    assert response.json["error_code"] == "GATEWAY_ERROR"
    assert "bug" not in response.get_data(as_text=True)
    assert "unexpected error while handling the request" in caplog.text


def test_wrong_method_is_405_json(client):
    response = client.get("/invocations", headers=AUTH)
    assert response.status_code == 405
    assert response.json["error_code"] == "METHOD_NOT_ALLOWED"
    assert response.headers["Allow"] == "OPTIONS, POST"


def test_the_model_server_gets_the_values_the_gateway_checked(client, upstream_calls):
    """With `net_area` twice, whichever value a parser keeps, the model must see the one the
    gateway checked: the forwarded body has the key once, with the value that passed."""
    listing = orjson.dumps({"dataframe_records": [{**ROW, "net_area": "MARK"}]})
    body = listing.replace(b'"MARK"', b'"evil","net_area":' + orjson.dumps(ROW["net_area"]))

    response = post(client, body)

    assert response.status_code == 200, response.json
    forwarded = upstream_calls[0][0]
    assert forwarded.count(b'"net_area"') == 1
    assert orjson.loads(forwarded) == {"inputs": {k: [v] for k, v in ROW.items()}}
