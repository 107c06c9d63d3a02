"""The real gateway (gunicorn, 2 workers) in front of the real model server."""

from __future__ import annotations

import http.client
import http.server
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from pyfunc.schema import FEATURE_NAMES
from tests.support.gateway import (
    ALICE_KEY,
    BOB_KEY,
    RunningGateway,
    fake_upstream,
    read_log,
    running_gateway,
)
from tests.support.traffic import ALICE, listings, metric, post, requests_total, settled_lines

pytestmark = pytest.mark.integration

MAX_WORKER_RSS_MB = 150


@pytest.fixture(scope="module")
def gateway(model_server, tmp_path_factory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gateway")
    with running_gateway(
        state, model_server.url, info_path=model_server.info_path, workers=2
    ) as running:
        yield running


def bodies(rows: list[dict]) -> dict[str, dict]:
    return {
        "dataframe_records": {"dataframe_records": rows},
        "dataframe_split": {
            "dataframe_split": {
                "columns": list(FEATURE_NAMES),
                "data": [[r[n] for n in FEATURE_NAMES] for r in rows],
            }
        },
        "inputs": {"inputs": {n: [r[n] for r in rows] for n in FEATURE_NAMES}},
        "inputs_records": {"inputs": rows},
        "instances": {"instances": rows},
        "with_params": {
            "dataframe_records": [*rows[:-1], {**rows[-1], "sector": "marte"}],
            "params": {"on_unknown_category": "flag"},
        },
    }


@pytest.mark.parametrize(
    "fmt",
    [
        "dataframe_records",
        "dataframe_split",
        "inputs",
        "inputs_records",
        "instances",
        "with_params",
    ],
)
def test_predictions_equal_the_model_servers(model_server, gateway, fmt):
    body = bodies(listings(4))[fmt]
    direct = post(model_server.url, body)
    through = post(gateway.url, body, ALICE)
    assert direct.status_code == 200, direct.text
    assert through.status_code == 200, through.text
    assert through.json() == direct.json()
    for answer in through.json()["predictions"]:
        assert answer["price_low"] < answer["price"] < answer["price_high"]
    version = json.loads(model_server.info_path.read_text())["version"]
    assert through.headers["X-Model-Version"] == str(version)
    assert len(through.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "MISSING_API_KEY"),
        ({"X-API-Key": "wrong"}, 403, "INVALID_API_KEY"),
        ({"Authorization": "Bearer wrong"}, 403, "INVALID_API_KEY"),
        ({"X-API-Key": ALICE_KEY}, 200, None),
        ({"Authorization": f"Bearer {BOB_KEY}"}, 200, None),
    ],
)
def test_every_auth_case(gateway, headers, status, code):
    response = post(gateway.url, bodies(listings(1))["dataframe_records"], headers)
    assert response.status_code == status
    if code:
        assert response.json()["error_code"] == code


def test_model_validation_error_is_clean(gateway):
    rows = listings(2)
    rows[1]["net_area"] = -5
    response = post(gateway.url, {"dataframe_records": rows}, ALICE)
    assert response.status_code == 400
    content = response.json()
    assert content["error_code"] == "INVALID_FEATURES"
    assert [(e["field"], e["row"]) for e in content["errors"]] == [("net_area", 1)]
    assert "net_area" in content["message"]
    assert "row 1" in content["message"]
    for leak in ("Failed to predict", "stack_trace", "Traceback", "las condes", "departamento"):
        assert leak not in response.text


def test_the_zero_rule_through_the_gateway(gateway):
    """0 bathrooms and 0 net area are priced and flagged; a usable area of 0 is a 400."""
    rows = listings(3)
    rows[1]["n_bathroom"], rows[2]["net_area"] = 0, 0
    priced = post(gateway.url, {"dataframe_records": rows}, ALICE)
    rows[2]["net_usable_area"] = 0
    refused = post(gateway.url, {"dataframe_records": rows}, ALICE)

    assert priced.status_code == 200, priced.text
    flags = [p["outside_training_range"] for p in priced.json()["predictions"]]
    assert flags == ["", "n_bathroom", "net_area"]
    assert refused.status_code == 400
    assert refused.json()["errors"] == [
        {
            "field": "net_usable_area",
            "row": 2,
            "message": "net_usable_area must be from 10 to 5000 m2 (row 2, got 0)",
        }
    ]


def test_unknown_sector_names_field_and_row(gateway):
    rows = listings(3)
    rows[2]["sector"] = "marte"
    content = post(gateway.url, {"dataframe_records": rows}, ALICE).json()
    assert content["error_code"] == "INVALID_FEATURES"
    assert [(e["field"], e["row"]) for e in content["errors"]] == [("sector", 2)]


def test_missing_content_type_is_415(gateway):
    response = requests.post(
        f"{gateway.url}/invocations",
        timeout=10,
        headers=ALICE,
        data=json.dumps({"dataframe_records": listings(1)}).encode(),
    )
    assert response.status_code == 415
    assert response.json()["error_code"] == "UNSUPPORTED_MEDIA_TYPE"


NINE_MB = 9 * 1024 * 1024
LIMIT = "the gateway accepts at most 8388608 bytes: split the batch"


def post_too_large(gateway: RunningGateway, body: object, chunked: bool) -> tuple[int, dict]:
    """POST with http.client, which sends the whole body before it reads the answer and,
    unlike urllib3, stops at a broken pipe."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/invocations",
            body=body,
            encode_chunked=chunked,
            headers={**ALICE, "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_a_body_over_the_limit_is_answered_413_not_reset(gateway):
    """The gateway answers, then reads the rest of the 9 MB so that the client can read it."""
    status, content = post_too_large(gateway, b" " * NINE_MB, chunked=False)
    assert (status, content["error_code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert content["message"] == f"Content-Length is {NINE_MB} bytes; {LIMIT}"


def test_a_chunked_body_over_the_limit_is_answered_413(gateway):
    status, content = post_too_large(gateway, (b" " * 1024 * 1024 for _ in range(9)), chunked=True)
    assert (status, content["error_code"]) == (413, "PAYLOAD_TOO_LARGE")
    assert content["message"] == f"the body is larger; {LIMIT}"


def test_docs_and_model_info(gateway, model_server):
    assert requests.get(f"{gateway.url}/docs", timeout=10).status_code == 200
    model = requests.get(f"{gateway.url}/model", headers=ALICE, timeout=10)
    assert model.status_code == 200
    served = json.loads(model_server.info_path.read_text())
    assert model.json()["version"] == served["version"]
    assert model.json()["metrics"] == served["metrics"]


def test_burst_is_logged_and_counted_exactly(gateway):
    before_lines, before_count = len(settled_lines(gateway)), requests_total(gateway)
    body = {"dataframe_records": listings(2)}
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda _: post(gateway.url, body, ALICE).status_code, range(60)))
    assert statuses == [200] * 60
    new = settled_lines(gateway)[before_lines:]
    assert len(new) == 60
    assert len({line["request_id"] for line in new}) == 60
    assert all(line["rows"] == 2 and line["key_id"] == "alice" for line in new)
    assert all(len(line["predictions"]) == 2 for line in new)
    assert all(
        low < price < high
        for line in new
        for low, price, high in zip(
            line["price_low"], line["predictions"], line["price_high"], strict=True
        )
    )
    assert requests_total(gateway) - before_count == 60


def test_workers_stay_small(gateway):
    pids = gateway.worker_pids()
    assert len(pids) == 2
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(
            next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]
        )
        assert rss_kb < MAX_WORKER_RSS_MB * 1024, f"worker {pid} uses {rss_kb} kB"


def test_model_server_down_then_back(model_server, gateway):
    body = {"dataframe_records": listings(1)}
    model_server.stop()
    try:
        response = post(gateway.url, body, ALICE)
        assert response.status_code == 503
        assert response.json()["error_code"] == "UPSTREAM_UNAVAILABLE"
        assert requests.get(f"{gateway.url}/ready", timeout=10).status_code == 503
        assert metric(gateway, "gateway_upstream_up") == 0
    finally:
        model_server.start()
    assert post(gateway.url, body, ALICE).status_code == 200
    assert requests.get(f"{gateway.url}/ready", timeout=10).status_code == 200
    assert metric(gateway, "gateway_upstream_up") == 1


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """A model server that hangs: answers /ping, sleeps 3 s on /invocations."""

    def do_GET(self) -> None:
        self._answer(b"\n")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(3)
        self._answer(b'{"predictions": []}')

    def _answer(self, body: bytes) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    with fake_upstream(_SlowHandler) as url:
        yield url


def test_slow_upstream_is_504(tmp_path, slow_upstream):
    with running_gateway(
        tmp_path, slow_upstream, workers=1, extra_env={"GATEWAY_READ_TIMEOUT_SECONDS": "0.5"}
    ) as slow:
        started = time.monotonic()
        response = post(slow.url, {"dataframe_records": listings(1)}, ALICE)
        assert response.status_code == 504
        assert response.json()["error_code"] == "UPSTREAM_TIMEOUT"
        assert time.monotonic() - started < 2.5


def test_lines_are_flushed_when_the_gateway_stops(tmp_path, slow_upstream):
    sent = [f"flush-{i}" for i in range(20)]
    with running_gateway(tmp_path, slow_upstream, workers=2) as short_lived:
        for request_id in sent:
            requests.get(
                f"{short_lived.url}/health", headers={"X-Request-ID": request_id}, timeout=5
            )
    logged = [line["request_id"] for line in read_log(short_lived.request_log)]
    assert sorted(i for i in logged if i.startswith("flush-")) == sorted(sent)


def test_malformed_keys_stop_gunicorn_with_a_clear_message(tmp_path):
    with (
        pytest.raises(RuntimeError) as caught,
        running_gateway(
            tmp_path, "http://127.0.0.1:1", extra_env={"GATEWAY_API_KEYS": "ok:k,SECRETVALUE"}
        ),
    ):
        pass
    message = str(caught.value)
    assert "gateway: GATEWAY_API_KEYS entry 2 has no ':'" in message
    assert "SECRETVALUE" not in message
