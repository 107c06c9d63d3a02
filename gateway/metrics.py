"""Prometheus metrics of the gateway (names fixed by DESIGN.md), multiprocess-aware.

Under gunicorn, `gateway/gunicorn.conf.py` sets PROMETHEUS_MULTIPROC_DIR before any worker
imports prometheus_client: every worker then writes its values to files in that directory and
`/metrics` merges them, so counts add up across workers. Without it (unit tests, one process)
each app gets its own fresh registry. Labels are few and bounded: endpoint is a route template
or "other", field a schema name or "other"; never a key, a raw path or a user value.
`gateway_feature_drift{feature}` is set by the drift monitor (`gateway.drift`, which explains its
"livemax" mode and its -1).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import partial

from flask import Blueprint, Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pyfunc.drift import DRIFT_THRESHOLD
from pyfunc.schema import FEATURE_NAMES

LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
LATENCY_BUCKETS += (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PRICE_BUCKETS_UF: tuple[int, ...] = (1_000, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 12_500)
PRICE_BUCKETS_UF += (15_000, 20_000, 25_000, 30_000, 40_000, 50_000, 75_000, 100_000, 150_000)
PRICE_BUCKETS_UF += (200_000, 300_000)
OTHER = "other"
AUTH_FAILURE_REASONS = ("missing", "invalid", "expired", "scope")  # what gateway.auth reports
KEY_RELOAD_RESULTS = ("loaded", "rejected")  # what gateway.auth.KeyRing reports
_FIELDS = frozenset(FEATURE_NAMES)


class GatewayMetrics:
    """The gateway's metric objects, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, key_ids: int = 20):
        r = self.registry = registry or CollectorRegistry()
        self._key_ids_bound = key_ids
        self._key_ids: frozenset[str] = frozenset()
        counter, gauge = partial(Counter, registry=r), partial(Gauge, registry=r)
        histogram = partial(Histogram, registry=r)
        self.requests = counter(
            "gateway_requests", "Requests answered, by route and status.", ["endpoint", "status"]
        )
        self.in_flight = gauge(
            "gateway_requests_in_flight",
            "Requests being answered now.",
            multiprocess_mode="livesum",
        )
        self.request_duration = histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request, in the gateway, by route and served model version.",
            ["endpoint", "version"],
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_duration = histogram(
            "gateway_upstream_duration_seconds",
            "Time the model server took for /invocations, by model version.",
            ["version"],
            buckets=LATENCY_BUCKETS,
        )
        self.predicted_price = histogram(
            "gateway_predicted_price_uf",
            "Predicted prices, in UF, by model version.",
            ["version"],
            buckets=PRICE_BUCKETS_UF,
        )
        self.rows_predicted = counter("gateway_rows_predicted", "Rows priced successfully.")
        self.validation_errors = counter(
            "gateway_validation_errors",
            "Requests refused for invalid features, by field.",
            ["field"],
        )
        self.auth_failures = counter(
            "gateway_auth_failures", "Refused requests, by reason.", ["reason"]
        )
        self.upstream_up = gauge(
            "gateway_upstream_up",
            "1 when the model server answered the last call, else 0.",
            multiprocess_mode="livemostrecent",
        )
        self.pool_servers = gauge(
            "gateway_pool_servers",
            "Model servers in the pool: all, and those in rotation.",
            ["state"],
            multiprocess_mode="livemostrecent",
        )
        self.model_info = gauge(
            "gateway_model_info",
            "1 for the model version being served.",
            ["version"],
            multiprocess_mode="mostrecent",
        )
        self.feature_drift = gauge(
            "gateway_feature_drift",
            f"PSI of the recent rows against the training data, by feature: 0 = like the "
            f"training data, above {DRIFT_THRESHOLD:g} a significant shift; -1 = not measured "
            f"yet for the served model. Maximum over the workers.",
            ["feature"],
            multiprocess_mode="livemax",
        )
        self.client_requests = counter(
            "gateway_client_requests",
            "Requests that presented a known API key, whatever the answer, by key id (the "
            "first GATEWAY_METRICS_KEY_IDS ids listed; the others: other).",
            ["key_id"],
        )
        self.rate_limited = counter(
            "gateway_rate_limited",
            "Requests answered 429 for their key id's rate, by key id (as "
            "gateway_client_requests_total).",
            ["key_id"],
        )
        self.key_reloads = counter(
            "gateway_api_keys_reloads",
            "Loads of the API keys, by result: loaded, or rejected (a bad GATEWAY_API_KEYS_FILE; "
            "the keys in force were kept).",
            ["result"],
        )
        self.request_log_errors = counter(
            "gateway_request_log_errors", "Request-log lines that could not be written."
        )
        self.prediction_store_errors = counter(
            "gateway_prediction_store_errors",
            "Priced rows dropped before reaching the prediction store (too many waited).",
        )
        # The refusal counters' known labels start at 0: `rate()` only sees an increase from a
        # value it has scraped, so a counter that appears at 1 would hide the first refusal from
        # every panel and alert.
        for reason in AUTH_FAILURE_REASONS:
            self.auth_failures.labels(reason)
        for field in (*FEATURE_NAMES, OTHER):
            self.validation_errors.labels(field)
        for result in KEY_RELOAD_RESULTS:
            self.key_reloads.labels(result)
        self.use_key_ids([])
        self._exposed = self.registry
        if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # merged over the workers
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=directory)

    def observe_request(self, endpoint: str, status: int, seconds: float, version: str) -> None:
        """Count one answered request and its duration under the model version it got."""
        self.requests.labels(endpoint, str(status)).inc()
        self.request_duration.labels(endpoint, version).observe(seconds)

    def keys_loaded(self, result: str, ids: Sequence[str]) -> None:
        """Count a load of the API keys; a successful one sets which ids get their own label."""
        self.key_reloads.labels(result).inc()
        if result == "loaded":
            self.use_key_ids(ids)

    def use_key_ids(self, ids: Sequence[str]) -> None:
        """Label the first ids (the bound) by name, the others as "other"; all start at 0."""
        self._key_ids = frozenset(ids[: self._key_ids_bound])
        for label in (*self._key_ids, OTHER):
            self.client_requests.labels(label)
            self.rate_limited.labels(label)

    def observe_client(self, key_id: str, status: int) -> None:
        """Count one request of `key_id` (and its 429)."""
        label = key_id if key_id in self._key_ids else OTHER
        self.client_requests.labels(label).inc()
        if status == 429:
            self.rate_limited.labels(label).inc()

    def count_validation_errors(self, fields: Iterable[str]) -> None:
        """Count one rejected request under each field it got wrong (names outside the schema
        as "other"), however many rows had the problem."""
        for field in {field if field in _FIELDS else OTHER for field in fields}:
            self.validation_errors.labels(field).inc()

    def observe_prices(self, prices: Sequence[float], version: str) -> None:
        histogram = self.predicted_price.labels(version)
        for price in prices:
            histogram.observe(price)

    def pool_state(self, healthy: int, total: int) -> None:
        self.pool_servers.labels("healthy").set(healthy)
        self.pool_servers.labels("total").set(total)

    def model_version_changed(self, old: str, new: str) -> None:
        if old:
            self.model_info.labels(old).set(0)
        self.model_info.labels(new).set(1)

    def add_collector(self, collector: Collector) -> None:
        """Expose what `collector` reads at each scrape (e.g. figures from a database)."""
        self._exposed.register(collector)

    def exposition(self) -> bytes:
        """The text exposition: merged over workers in multiprocess mode."""
        return generate_latest(self._exposed)


def init_app(app: Flask, metrics: GatewayMetrics) -> None:
    """Serve GET /metrics (public unless GATEWAY_METRICS_PUBLIC=false, see gateway.auth)."""
    blueprint = Blueprint("metrics", __name__)

    @blueprint.get("/metrics", endpoint="metrics")
    def exposition() -> Response:
        return Response(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.register_blueprint(blueprint)
