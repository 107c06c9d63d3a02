"""Feature drift in the gateway: a window of recent rows per worker, scored against the served
model's training reference, exposed as gateway_feature_drift{feature}."""

from __future__ import annotations

import json
import logging
import os
import time

import orjson
import pytest
from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from gateway import drift as gateway_drift
from gateway.app import create_app, gateway_of
from gateway.drift import NOT_MEASURED, WINDOW_ROWS, DriftMonitor, usable_reference
from gateway.metrics import GatewayMetrics
from gateway.upstream import UpstreamAnswer
from pyfunc.drift import DRIFT_THRESHOLD, MIN_ROWS
from pyfunc.schema import FEATURE_NAMES
from tests.support.gateway import ALICE_KEY, gateway_settings, read_log, write_model_info

AUTH = {"X-API-Key": ALICE_KEY}
DRIFTED = ["net_usable_area", "sector"]


@pytest.fixture(scope="module")
def reference() -> dict:
    """The training reference as the served-model file holds it (a JSON round trip)."""
    from pyfunc.profile import build_profile
    from steps.generate import generate_listings

    profile = build_profile(generate_listings(3000, 1, dirty=False))
    return json.loads(json.dumps(profile["reference"]))


@pytest.fixture(scope="module")
def calm() -> list[dict]:
    """2,000 listings drawn like the training data (another seed), features only."""
    from steps.generate import generate_listings

    return generate_listings(2000, 2, dirty=False)[list(FEATURE_NAMES)].to_dict("records")


@pytest.fixture(scope="module")
def drifted(calm) -> list[dict]:
    """The same listings, twice as big and all in one sector."""
    return [
        {**row, "net_usable_area": row["net_usable_area"] * 2, "sector": "la reina"} for row in calm
    ]


def columns(rows: list[dict]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in FEATURE_NAMES}


def make_app(tmp_path, reference: dict | None, **env: str):
    info = {"reference": reference} if reference is not None else {}
    write_model_info(tmp_path / "served-model.json", version="3", **info)
    app = create_app(gateway_settings(tmp_path, **env))
    gateway_of(app).pool.predict = lambda *a: (_stub_predict(*a), "3")
    return app


def _stub_predict(body: bytes, content_type: str, request_id: str) -> UpstreamAnswer:
    """A model server that prices every row at 10,000 UF."""
    rows = len(orjson.loads(body)["inputs"]["type"])
    answer = {"predictions": [{"price": 10_000.0, "outside_training_range": ""}] * rows}
    return UpstreamAnswer(200, orjson.dumps(answer), "application/json", 0.001)


def serve_another_model(app, tmp_path, **fields) -> None:
    """Version 4 replaces version 3 in the served-model file; the gateway notices."""
    path = tmp_path / "served-model.json"
    before = path.stat().st_mtime_ns
    write_model_info(path, version="4", **fields)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # even on a coarse-grained clock
    gateway_of(app).model_info.refresh(force=True)


def send(app, rows: list[dict], batch: int = 250) -> None:
    """POST `rows` in dataframe_split batches; wait until the request log has handled them."""
    client = app.test_client()
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        body = {
            "dataframe_split": {
                "columns": list(FEATURE_NAMES),
                "data": [[row[n] for n in FEATURE_NAMES] for row in chunk],
            }
        }
        response = client.post(
            "/invocations", data=orjson.dumps(body), headers=AUTH, content_type="application/json"
        )
        assert response.status_code == 200, response.json
    gateway_of(app).request_log.flush()


def gauges(metrics: GatewayMetrics) -> dict[str, float]:
    """gateway_feature_drift by feature, as exposed."""
    return {
        s.labels["feature"]: s.value
        for family in metrics.registry.collect()
        if family.name == "gateway_feature_drift"
        for s in family.samples
    }


def scored(app) -> dict[str, float]:
    """Score the window now (the monitor would within a second) and read the gauge."""
    gateway_of(app).drift.score()
    return gauges(gateway_of(app).metrics)


@pytest.fixture
def apps():
    made = []
    yield made
    for app in made:
        gateway_of(app).close()


def test_traffic_like_the_training_data_stays_under_the_threshold(tmp_path, apps, reference, calm):
    apps.append(app := make_app(tmp_path, reference))
    send(app, calm)
    drift = scored(app)
    assert set(drift) == set(FEATURE_NAMES)
    assert all(0 <= value < DRIFT_THRESHOLD for value in drift.values()), drift


def test_drifted_features_cross_the_threshold_even_when_payloads_are_not_logged(
    tmp_path, apps, reference, drifted
):
    apps.append(app := make_app(tmp_path, reference, GATEWAY_LOG_PAYLOADS="false"))
    send(app, drifted)
    drift = scored(app)
    assert sorted(f for f, value in drift.items() if value > DRIFT_THRESHOLD) == DRIFTED, drift
    lines = [
        line for line in read_log(tmp_path / "requests.jsonl") if line["path"] == "/invocations"
    ]
    assert len(lines) == 8
    assert not any("features" in line for line in lines)


def test_a_new_served_model_empties_the_window(tmp_path, apps, reference, calm, drifted):
    apps.append(app := make_app(tmp_path, reference))
    state = gateway_of(app)
    send(app, drifted)
    assert scored(app)["sector"] > DRIFT_THRESHOLD
    serve_another_model(app, tmp_path, reference=reference)
    assert state.drift.rows() == 0
    assert gauges(state.metrics) == dict.fromkeys(FEATURE_NAMES, NOT_MEASURED)
    send(app, calm[: MIN_ROWS - 1])
    assert scored(app) == dict.fromkeys(FEATURE_NAMES, NOT_MEASURED)  # too few rows to say
    send(app, calm[MIN_ROWS - 1 :])
    assert all(0 <= value < DRIFT_THRESHOLD for value in scored(app).values())


def test_without_a_reference_there_is_no_gauge_and_requests_are_logged(tmp_path, apps, calm):
    apps.append(app := make_app(tmp_path, None))
    send(app, calm[:300])
    assert scored(app) == {}
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "gateway_feature_drift{" not in text
    lines = [
        line for line in read_log(tmp_path / "requests.jsonl") if line["path"] == "/invocations"
    ]
    assert [len(line["features"]["sector"]) for line in lines] == [250, 50]


def test_a_model_without_reference_replacing_one_with_it_stops_the_scores(
    tmp_path, apps, reference, calm
):
    apps.append(app := make_app(tmp_path, reference))
    send(app, calm[:500])
    assert set(scored(app)) == set(FEATURE_NAMES)
    serve_another_model(app, tmp_path)
    assert not gateway_of(app).drift.active
    send(app, calm[500:1000])
    assert scored(app) == dict.fromkeys(FEATURE_NAMES, NOT_MEASURED)


def test_model_endpoint_does_not_send_the_reference(tmp_path, apps, reference):
    apps.append(app := make_app(tmp_path, reference))
    response = app.test_client().get("/model", headers=AUTH)
    assert response.status_code == 200
    assert response.json["version"] == "3"
    assert "reference" not in response.json
    assert gateway_of(app).model_info.reference == reference


# ---------------------------------------------------------------------------- the monitor


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
def monitor(metrics, reference):
    """A monitor that scores every batch at once."""
    monitor = DriftMonitor(metrics.feature_drift, interval=0)
    monitor.use_reference(reference)
    yield monitor
    monitor.close()


def test_the_window_keeps_only_the_last_rows(monitor, metrics, calm, drifted):
    monitor.observe(columns(drifted))
    monitor.observe(columns(calm[: WINDOW_ROWS // 2]))
    assert gauges(metrics)["sector"] > DRIFT_THRESHOLD
    monitor.observe(columns(calm[WINDOW_ROWS // 2 :] + calm[: WINDOW_ROWS // 2]))
    assert monitor.rows() == WINDOW_ROWS
    assert all(value < DRIFT_THRESHOLD for value in gauges(metrics).values())


def test_categories_are_compared_in_their_canonical_spelling(monitor, reference, calm):
    respelled = [
        {**row, "sector": f" {row['sector'].upper()} ", "type": row["type"].title()} for row in calm
    ]
    monitor.observe(columns(calm))
    canonical = monitor.score()
    monitor.use_reference(reference)
    monitor.observe(columns(respelled))
    assert monitor.score() == canonical


def test_rows_are_scored_at_most_once_per_interval_and_the_last_ones_too(
    metrics, reference, calm, drifted
):
    monitor = DriftMonitor(metrics.feature_drift, interval=0.3)
    monitor.use_reference(reference)
    try:
        monitor.observe(columns(calm))  # the first rows are scored at once
        assert gauges(metrics)["sector"] < DRIFT_THRESHOLD
        monitor.observe(columns(drifted))  # less than 0.3 s later: left for the timer
        assert gauges(metrics)["sector"] < DRIFT_THRESHOLD
        deadline = time.monotonic() + 3
        while gauges(metrics)["sector"] < DRIFT_THRESHOLD and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gauges(metrics)["sector"] > DRIFT_THRESHOLD
    finally:
        monitor.close()


def test_malformed_reference_entries_are_left_out(reference, caplog):
    broken = {
        **reference,
        "n_rooms": {"edges": [1, 2], "shares": [1.0]},
        "sector": {"shares": ["a"]},
        "garage": {"shares": {"yes": 1.0}},
    }
    with caplog.at_level(logging.WARNING, logger=gateway_drift.__name__):
        usable = usable_reference(broken)
    assert set(usable) == set(FEATURE_NAMES) - {"n_rooms", "sector"}
    assert "no drift for garage, n_rooms, sector" in caplog.text
    assert usable_reference(["not", "a", "dict"]) == {}
    assert usable_reference(None) == {}


def test_workers_are_merged_by_maximum_and_dead_ones_forgotten(tmp_path, monkeypatch):
    """Multiprocess mode as under gunicorn: two workers' windows, one of them then dies."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid, value in ((101, 0.05), (102, 0.6)):
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda pid=pid: pid))
        GatewayMetrics().feature_drift.labels("sector").set(value)

    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: 103))

    def exposed() -> dict[str, float]:
        text = GatewayMetrics().exposition().decode()
        return {
            s.labels["feature"]: s.value
            for family in text_string_to_metric_families(text)
            if family.name == "gateway_feature_drift"
            for s in family.samples
        }

    assert exposed() == {"sector": 0.6}
    mark_process_dead(102, str(tmp_path))
    assert exposed() == {"sector": 0.05}
