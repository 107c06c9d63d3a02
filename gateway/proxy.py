"""POST /invocations: check the body, forward what was checked to the model server, answer.

The request path does the minimum: content type, size, one orjson parse, a column-wise shape
check, the upstream call. The model server gets what was checked, serialized again, not the
client's bytes (when a key appears twice in an object, two JSON parsers may keep different
values, and the model must see the one the gateway checked): the features as `inputs` columns,
which MLflow hands to the model as arrays without building or casting a DataFrame, and the
params. The answer is passed through byte for byte and parsed later, on the request-log thread,
for the price histogram, the drift window and the logged predictions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, g

from gateway import body, errors, upstream
from gateway.drift import DriftMonitor
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.pool import Pool
from gateway.requestlog import RequestRecord, iso_utc
from gateway.store import PredictionWriter, prediction_rows
from gateway.validation import INPUTS, PARAMS, Columns, validate_payload
from pyfunc.schema import FLAG_COLUMN, HIGH_COLUMN, LOW_COLUMN, PREDICTION_COLUMN

logger = logging.getLogger(__name__)

SECTOR = "sector"  # the feature the prediction store keeps, for accuracy per sector


def _count_invalid_fields(metrics: GatewayMetrics, error: GatewayError) -> None:
    if error.code == errors.INVALID_FEATURES:
        metrics.count_validation_errors([e["field"] for e in error.errors or ()] or ["other"])


def prediction_fields(
    columns: Columns,
    answer: bytes,
    version: str,
    metrics: GatewayMetrics,
    drift: DriftMonitor,
    log_payloads: bool,
    on_priced: Callable[[list[dict]], None] | None = None,
) -> dict[str, Any]:
    """Parse the answer of model `version`: observe the prices, hand the rows to `on_priced`
    (the prediction store), add them to the drift window; the features and predictions to log
    when `log_payloads` (GATEWAY_LOG_PAYLOADS). Runs on the log's thread."""
    try:
        predictions = orjson.loads(answer)["predictions"]
        rows = [p if isinstance(p, dict) else {PREDICTION_COLUMN: p} for p in predictions]
        prices = [r.get(PREDICTION_COLUMN) for r in rows]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        logger.warning("could not read the model's predictions: %r", exc)
        return {"payload_error": "unreadable predictions"}
    finite = [p for p in prices if isinstance(p, (int, float)) and math.isfinite(p)]
    metrics.observe_prices(finite, version)
    if on_priced is not None:
        on_priced(rows)
    if not (log_payloads or drift.active):
        return {}
    drift.observe(columns)
    if not log_payloads:
        return {}
    ranges = {name: [r.get(name) for r in rows] for name in (LOW_COLUMN, HIGH_COLUMN)}
    return {
        "features": columns,
        "predictions": prices,
        **ranges,
        FLAG_COLUMN: [r.get(FLAG_COLUMN, "") for r in rows],
    }


def init_app(
    app: Flask,
    pool: Pool,
    metrics: GatewayMetrics,
    drift: DriftMonitor,
    log_payloads: bool,
    predictions: PredictionWriter | None = None,
) -> None:
    """Serve POST /invocations through the model server `pool`; priced rows to `predictions`."""
    blueprint = Blueprint("proxy", __name__)
    read_answer = partial(
        prediction_fields, metrics=metrics, drift=drift, log_payloads=log_payloads
    )

    @blueprint.post("/invocations", endpoint="invocations")
    def invocations() -> Response:
        record = g.record
        content_type = body.require_json()
        raw = body.read_body()
        try:
            payload = body.parse_json(raw)
            batch = validate_payload(payload)
        except GatewayError as error:
            _count_invalid_fields(metrics, error)
            raise
        record.rows = batch.rows
        columns = batch.columns()
        forwarded = {INPUTS: columns} | ({PARAMS: batch.params} if batch.params is not None else {})
        answer, record.model_version = pool.predict(
            orjson.dumps(forwarded), content_type, record.request_id
        )
        record.upstream_latency_ms = round(answer.seconds * 1000, 3)
        metrics.upstream_duration.labels(record.model_version).observe(answer.seconds)
        if answer.status != 200:
            failure = upstream.failure(answer)
            _count_invalid_fields(metrics, failure)
            raise failure
        metrics.rows_predicted.inc(batch.rows)
        on_priced = predictions and partial(_store, predictions, record, columns, batch.listing_ids)
        record.extra = partial(
            read_answer, columns, answer.body, record.model_version, on_priced=on_priced
        )
        return Response(answer.body, status=200, content_type=answer.content_type)

    app.register_blueprint(blueprint)


def _store(
    predictions: PredictionWriter,
    record: RequestRecord,
    columns: Columns,
    listing_ids: list[str] | None,
    rows: list[dict],
) -> None:
    """Queue the priced rows of `record` for the prediction store (on the log's thread)."""
    predictions.add(
        prediction_rows(
            record.request_id,
            record.key_id,
            iso_utc(record.started_at),
            record.model_version or "",
            columns[SECTOR],
            listing_ids,
            rows,
        )
    )
