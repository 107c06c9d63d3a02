"""The gateway's app factory: `create_app()` wires settings, metrics, auth, proxy and docs.

Run under gunicorn: `gunicorn -c gateway/gunicorn.conf.py 'gateway.app:create_app()'`.
Nothing happens at import time; each gunicorn worker builds its own app (no preload), hence
its own connection pool, request-log thread, drift window and metric values.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from functools import partial

from flask import Flask, Response, g, request

from config.settings import Settings
from gateway import (
    auth,
    body,
    docs,
    errors,
    health,
    limits,
    metrics,
    modelinfo,
    outcomes,
    proxy,
)
from gateway.auth import KeyRing
from gateway.drift import DriftMonitor
from gateway.limits import RateLimiter
from gateway.metrics import GatewayMetrics
from gateway.modelinfo import ModelInfo
from gateway.openapi import build_spec
from gateway.pool import Pool
from gateway.requestlog import RequestLog, RequestRecord
from gateway.store import PredictionWriter, Store
from gateway.upstream import Upstream

EXTENSION = "gateway"
OTHER_ENDPOINT = "other"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class Gateway:
    """The per-app (per-worker) state, kept in `app.extensions["gateway"]`."""

    settings: Settings
    metrics: GatewayMetrics
    model_info: ModelInfo
    pool: Pool
    request_log: RequestLog
    drift: DriftMonitor
    keys: KeyRing
    limiter: RateLimiter
    store: Store  # outcomes and live accuracy; the writer has a connection of its own
    predictions: PredictionWriter

    def close(self) -> None:
        """Flush the request log and the prediction store, then stop the drift monitor
        (gunicorn's worker_exit hook)."""
        self.request_log.close()
        self.predictions.close()
        self.store.close()
        self.drift.close()
        self.limiter.close()


def create_app(settings: Settings | None = None) -> Flask:
    """Build the gateway; raises SettingsError on unusable settings (e.g. no API key)."""
    settings = settings or Settings.from_env()
    gateway = _build(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.gateway_max_body_bytes
    app.extensions[EXTENSION] = gateway
    _install_request_hooks(app, gateway)
    auth.init_app(
        app,
        settings,
        gateway.keys,
        on_failure=lambda reason: gateway.metrics.auth_failures.labels(reason).inc(),
    )
    limits.init_app(app, settings, gateway.limiter)
    errors.init_app(app)
    proxy.init_app(
        app,
        gateway.pool,
        gateway.metrics,
        gateway.drift,
        settings.gateway_log_payloads,
        gateway.predictions,
    )
    outcomes.init_app(app, gateway.store)
    gateway.metrics.add_collector(outcomes.LiveAccuracy(gateway.store))
    health.init_app(app, gateway.pool, gateway.model_info)
    modelinfo.init_app(app, gateway.model_info)
    metrics.init_app(app, gateway.metrics)
    docs.init_app(app, build_spec(settings))
    gateway.model_info.refresh(force=True)
    return app


def _build(settings: Settings) -> Gateway:
    gauges = GatewayMetrics(key_ids=settings.gateway_metrics_key_ids)
    keys = KeyRing(
        settings, on_reload=lambda result, loaded: gauges.keys_loaded(result, loaded.ids())
    )
    drift = DriftMonitor(gauges.feature_drift)

    def client(url: str) -> Upstream:
        return Upstream(
            url,
            settings.gateway_connect_timeout_seconds,
            settings.gateway_read_timeout_seconds,
            pool_size=settings.gateway_connections,
            on_reachable=lambda up: gauges.upstream_up.set(1 if up else 0),
        )

    # The model servers: GATEWAY_UPSTREAM_URL until the served-model file names some.
    pool = Pool(client, settings.gateway_out_of_rotation_seconds, on_state=gauges.pool_state)
    pool.use([settings.gateway_upstream_url], modelinfo.UNKNOWN)

    def use_pool(servers: list[str] | None, version: str) -> None:
        pool.use(servers or [settings.gateway_upstream_url], version)

    return Gateway(
        settings=settings,
        metrics=gauges,
        model_info=ModelInfo(
            settings.model_info_path,
            on_change=gauges.model_version_changed,
            on_reference=drift.use_reference,
            on_pool=use_pool,
        ),
        pool=pool,
        request_log=RequestLog(settings.gateway_request_log, on_lost=gauges.request_log_errors.inc),
        drift=drift,
        keys=keys,
        limiter=RateLimiter(limits.state_path(settings)),
        store=Store(settings.prediction_store_url),
        predictions=PredictionWriter(
            Store(settings.prediction_store_url), on_lost=gauges.prediction_store_errors.inc
        ),
    )


def _install_request_hooks(app: Flask, gateway: Gateway) -> None:
    """Open a record before anything else runs; close it (metrics, log line) after."""

    @app.before_request
    def begin() -> None:
        g.record = _new_record()
        gateway.metrics.in_flight.inc()
        gateway.model_info.refresh()  # a new pool takes effect before this request is sent

    @app.after_request
    def finish(response: Response) -> Response:
        record = g.get("record") or _new_record()
        seconds = time.perf_counter() - record.started
        endpoint = request.url_rule.rule if request.url_rule else OTHER_ENDPOINT
        version = record.model_version = record.model_version or gateway.model_info.version
        response.headers["X-Request-ID"] = record.request_id
        response.headers["X-Model-Version"] = version
        gateway.metrics.observe_request(endpoint, response.status_code, seconds, version)
        if record.key_id:
            gateway.metrics.observe_client(record.key_id, response.status_code)
        gateway.request_log.emit(partial(record.fields, response.status_code, seconds * 1000))
        body.discard_unread()
        return response

    @app.teardown_request
    def end(_error: BaseException | None) -> None:
        if "record" in g:  # begin() counted it in flight
            gateway.metrics.in_flight.dec()


def _new_record() -> RequestRecord:
    sent = request.headers.get("X-Request-ID", "")
    request_id = sent if _SANE_REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    return RequestRecord(request_id, request.method, request.path[:256])


def gateway_of(app: Flask) -> Gateway:
    """The Gateway state of an app built by `create_app`."""
    return app.extensions[EXTENSION]
