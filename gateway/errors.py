"""Every failure is JSON: `{"error_code": ..., "message": ..., "errors"?: [...], "request_id"?}`.

Handlers turn `GatewayError`, Werkzeug's HTTP errors (404, 405, ...) and, as a last resort,
any unexpected exception into that shape. The catch-all answers 502 and logs the traceback
server-side; the code is written so that it is never reached.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

JSON = "application/json"

# error_code -> HTTP status; the OpenAPI document lists this table.
MISSING_API_KEY = "MISSING_API_KEY"
INVALID_API_KEY = "INVALID_API_KEY"
EXPIRED_API_KEY = "EXPIRED_API_KEY"
FORBIDDEN_SCOPE = "FORBIDDEN_SCOPE"
RATE_LIMITED = "RATE_LIMITED"
INVALID_JSON = "INVALID_JSON"
INVALID_FEATURES = "INVALID_FEATURES"
INVALID_OUTCOMES = "INVALID_OUTCOMES"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
BAD_REQUEST = "BAD_REQUEST"
NOT_FOUND = "NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
UPSTREAM_ERROR = "UPSTREAM_ERROR"
UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
MODEL_INFO_UNAVAILABLE = "MODEL_INFO_UNAVAILABLE"
STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
GATEWAY_ERROR = "GATEWAY_ERROR"

ERROR_CODES: dict[str, tuple[int, str]] = {
    MISSING_API_KEY: (401, "No API key in X-API-Key or Authorization: Bearer."),
    INVALID_API_KEY: (403, "The API key is not valid."),
    EXPIRED_API_KEY: (403, "The API key has expired."),
    FORBIDDEN_SCOPE: (403, "The API key's scopes do not include this endpoint."),
    RATE_LIMITED: (429, "Over the key's request rate; Retry-After says when to try again."),
    INVALID_JSON: (400, "The body is not valid JSON (NaN and Infinity are not JSON)."),
    INVALID_FEATURES: (400, "Wrong shape or values; `errors` names each field and row."),
    INVALID_OUTCOMES: (400, "Malformed outcomes; `errors` names each field and outcome."),
    PAYLOAD_TOO_LARGE: (413, "The body is larger than the gateway accepts."),
    UNSUPPORTED_MEDIA_TYPE: (415, "Content-Type must be application/json (UTF-8)."),
    BAD_REQUEST: (400, "The HTTP request itself could not be read."),
    NOT_FOUND: (404, "No such endpoint."),
    METHOD_NOT_ALLOWED: (405, "The endpoint does not accept this method."),
    UPSTREAM_ERROR: (502, "The model server failed or answered something unexpected."),
    UPSTREAM_UNAVAILABLE: (503, "The model server is not reachable."),
    UPSTREAM_TIMEOUT: (504, "The model server did not answer in time."),
    MODEL_INFO_UNAVAILABLE: (503, "No information about the served model yet."),
    STORE_UNAVAILABLE: (503, "The prediction store is not reachable; nothing was stored."),
    GATEWAY_ERROR: (502, "Unexpected gateway failure (logged server-side)."),
}


class GatewayError(Exception):
    """A failure with its HTTP status, stable error code and a message for the client."""

    def __init__(
        self,
        code: str,
        message: str,
        errors: Sequence[dict[str, Any]] | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.errors = list(errors) if errors else None
        self.status = status or ERROR_CODES[code][0]
        self.headers = headers or {}


def json_response(payload: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(payload), status=status, mimetype=JSON, headers=headers)


def error_response(error: GatewayError) -> Response:
    """The JSON answer for `error`; remembers its code for the request log and metrics."""
    body: dict[str, Any] = {"error_code": error.code, "message": error.message}
    if error.errors:
        body["errors"] = error.errors
    record = g.get("record")
    if record is not None:
        record.error_code = error.code
        body["request_id"] = record.request_id
    return json_response(body, error.status, error.headers)


_HTTP_CODES = {
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    413: PAYLOAD_TOO_LARGE,
    415: UNSUPPORTED_MEDIA_TYPE,
}


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 400
    allowed = sorted(getattr(exc, "valid_methods", None) or ())
    if status == 404:
        message = f"no endpoint {request.path[:200]}; see /docs for the API"
    elif status == 405:
        message = f"{request.path} does not accept {request.method}; allowed: {', '.join(allowed)}"
    else:
        message = exc.description or exc.name
    code = _HTTP_CODES.get(status, BAD_REQUEST if status < 500 else GATEWAY_ERROR)
    headers = {"Allow": ", ".join(allowed)} if allowed else None
    return error_response(
        GatewayError(code, message, status=status if status < 500 else 502, headers=headers)
    )


def _unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error while handling the request")
    return error_response(GatewayError(GATEWAY_ERROR, ERROR_CODES[GATEWAY_ERROR][1]))


def init_app(app: Flask) -> None:
    """Answer every error, expected or not, as JSON."""
    app.register_error_handler(GatewayError, error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
