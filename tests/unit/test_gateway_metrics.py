"""Prometheus metrics: names, low-cardinality labels, batch observation of prices."""

from __future__ import annotations

from functools import partial

from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app, gateway_of
from gateway.errors import GatewayError
from gateway.metrics import PRICE_BUCKETS_UF, GatewayMetrics
from gateway.upstream import UpstreamAnswer
from pyfunc.schema import FEATURE_NAMES, example_listing
from tests.support.gateway import ALICE_KEY, gateway_settings, write_model_info
from tests.support.processes import free_port

AUTH = {"X-API-Key": ALICE_KEY}


def sample(app, name: str, **labels: str) -> float | None:
    return gateway_of(app).metrics.registry.get_sample_value(name, labels)


def test_fixed_metric_names_are_exposed(app):
    client = app.test_client()
    client.get("/health")
    text = client.get("/metrics").get_data(as_text=True)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {
        "gateway_requests",
        "gateway_request_duration_seconds",
        "gateway_upstream_duration_seconds",
        "gateway_predicted_price_uf",
        "gateway_rows_predicted",
        "gateway_validation_errors",
        "gateway_auth_failures",
        "gateway_upstream_up",
        "gateway_model_info",
        "gateway_request_log_errors",
        "gateway_feature_drift",
        "gateway_requests_in_flight",
        "gateway_pool_servers",
    } <= set(families)
    assert families["gateway_feature_drift"].samples == []  # no served model, no drift


def test_requests_are_counted_by_route_template_never_raw_path(app):
    client = app.test_client()
    client.get("/health")
    client.get("/no/such/path/123")
    client.get("/another-unknown")
    assert sample(app, "gateway_requests_total", endpoint="/health", status="200") == 1
    assert sample(app, "gateway_requests_total", endpoint="other", status="404") == 2
    assert (
        sample(app, "gateway_request_duration_seconds_count", endpoint="/health", version="unknown")
        == 1
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert "/no/such/path" not in text


def test_price_buckets_span_1e3_to_3e5():
    assert PRICE_BUCKETS_UF[0] == 1_000
    assert PRICE_BUCKETS_UF[-1] == 300_000
    assert list(PRICE_BUCKETS_UF) == sorted(PRICE_BUCKETS_UF)


def test_prices_land_in_their_buckets():
    metrics = GatewayMetrics()
    metrics.observe_prices([500.0, 1000.0, 1000.1, 14_500.0, 1e7], "4")
    bucket = partial(metrics.registry.get_sample_value, "gateway_predicted_price_uf_bucket")
    buckets = [bucket({"le": le, "version": "4"}) for le in ("1000.0", "2000.0", "15000.0", "+Inf")]
    assert buckets == [2, 3, 4, 5]
    sum_of = partial(metrics.registry.get_sample_value, "gateway_predicted_price_uf_sum")
    assert sum_of({"version": "4"}) == 1e7 + 17_000.1


def test_upstream_up_follows_the_last_outcome(app):
    app.test_client().get("/ready")
    assert sample(app, "gateway_upstream_up") == 0
    gateway_of(app).metrics.upstream_up.set(1)
    assert sample(app, "gateway_upstream_up") == 1


def test_model_info_gauge_follows_the_served_version(tmp_path, app):
    info = gateway_of(app).model_info
    assert sample(app, "gateway_model_info", version="unknown") == 1
    write_model_info(tmp_path / "served-model.json", version="4")
    info.refresh(force=True)
    assert sample(app, "gateway_model_info", version="unknown") == 0
    assert sample(app, "gateway_model_info", version="4") == 1


def test_validation_errors_count_requests_per_field_with_bounded_labels():
    metrics = GatewayMetrics()
    metrics.count_validation_errors(["net_area", "garage", "dataframe_split", "net_area"])
    metrics.count_validation_errors(["net_area"])
    registry = metrics.registry
    assert registry.get_sample_value("gateway_validation_errors_total", {"field": "net_area"}) == 2
    assert registry.get_sample_value("gateway_validation_errors_total", {"field": "other"}) == 1
    assert registry.get_sample_value("gateway_validation_errors_total", {"field": "garage"}) is None


def test_refusal_counters_start_at_zero_for_every_known_label():
    registry = GatewayMetrics().registry
    for reason in ("missing", "invalid"):
        assert registry.get_sample_value("gateway_auth_failures_total", {"reason": reason}) == 0
    for field in (*FEATURE_NAMES, "other"):
        assert registry.get_sample_value("gateway_validation_errors_total", {"field": field}) == 0


def test_each_app_has_a_fresh_registry(tmp_path):
    first = create_app(gateway_settings(tmp_path / "a"))
    first.test_client().get("/health")
    second = create_app(gateway_settings(tmp_path / "b"))
    assert sample(first, "gateway_requests_total", endpoint="/health", status="200") == 1
    assert sample(second, "gateway_requests_total", endpoint="/health", status="200") is None
    gateway_of(first).close()
    gateway_of(second).close()


def test_latency_and_prices_carry_the_version_of_the_server_that_answered(tmp_path, monkeypatch):
    app = create_app(gateway_settings(tmp_path))
    answer = UpstreamAnswer(200, b'{"predictions": [{"price": 5000.0}]}', "application/json", 0.01)
    monkeypatch.setattr(gateway_of(app).pool, "predict", lambda *args: (answer, "7"))
    response = app.test_client().post(
        "/invocations", json={"dataframe_records": [example_listing()]}, headers=AUTH
    )
    assert response.status_code == 200
    gateway_of(app).request_log.flush()
    for name, labels in [
        ("gateway_request_duration_seconds_count", {"endpoint": "/invocations", "version": "7"}),
        ("gateway_upstream_duration_seconds_count", {"version": "7"}),
        ("gateway_predicted_price_uf_count", {"version": "7"}),
    ]:
        assert gateway_of(app).metrics.registry.get_sample_value(name, labels) == 1, name


def test_requests_in_flight_counts_the_requests_being_answered(tmp_path, monkeypatch):
    app = create_app(gateway_settings(tmp_path))
    during: list[float | None] = []

    def predict(*args):
        during.append(sample(app, "gateway_requests_in_flight"))
        raise GatewayError("UPSTREAM_UNAVAILABLE", "down")

    monkeypatch.setattr(gateway_of(app).pool, "predict", predict)
    client = app.test_client()
    assert sample(app, "gateway_requests_in_flight") == 0
    response = client.post(
        "/invocations", json={"dataframe_records": [example_listing()]}, headers=AUTH
    )
    assert response.status_code == 503
    client.get("/no/such/page")
    assert during == [1]
    assert sample(app, "gateway_requests_in_flight") == 0


def test_pool_servers_report_the_pool_size_and_servers_in_rotation(tmp_path):
    app = create_app(gateway_settings(tmp_path))
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    write_model_info(tmp_path / "served-model.json", servers=dead)
    gateway_of(app).model_info.refresh(force=True)
    assert sample(app, "gateway_pool_servers", state="total") == 2
    assert sample(app, "gateway_pool_servers", state="healthy") == 2
    response = app.test_client().post(
        "/invocations", json={"dataframe_records": [example_listing()]}, headers=AUTH
    )
    assert response.status_code == 503  # nothing listens there: both out of rotation
    assert sample(app, "gateway_pool_servers", state="healthy") == 0
    assert sample(app, "gateway_pool_servers", state="total") == 2
