"""GET /health (the gateway is alive) and GET /ready (a model server of the pool answers /ping)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response

from gateway.errors import UPSTREAM_UNAVAILABLE, GatewayError, json_response
from gateway.modelinfo import ModelInfo
from gateway.pool import Pool


def init_app(app: Flask, pool: Pool, info: ModelInfo) -> None:
    """Serve the two public probes; /ready also updates gateway_upstream_up."""
    blueprint = Blueprint("health", __name__)

    @blueprint.get("/health", endpoint="health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @blueprint.get("/ready", endpoint="ready")
    def ready() -> Response:
        if not pool.ping():
            raise GatewayError(UPSTREAM_UNAVAILABLE, "the model server does not answer")
        return json_response({"status": "ready", "model_version": info.version})

    app.register_blueprint(blueprint)
