"""The gateway's OpenAPI 3.1 document, built from `pyfunc.schema` (names, types, bounds,
descriptions, examples) and from the gateway's error table, so it cannot drift from the code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from config.settings import Settings
from gateway import outcomes
from gateway.errors import ERROR_CODES
from gateway.validation import (
    DF_RECORDS,
    DF_SPLIT,
    INPUTS,
    INSTANCES,
    LISTING_ID_MAX,
    LISTING_IDS,
    PARAMS,
)
from pyfunc.schema import (
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    FLAG_COLUMN,
    HIGH_COLUMN,
    LOW_COLUMN,
    NUMERIC_FEATURES,
    PREDICTION_COLUMN,
    TARGET,
    example_listing,
)

TITLE = "Property-Friends valuation API"
REF = "#/components/schemas/"
# status -> name of its response component; ERROR_CODES says which codes use it
ERROR_RESPONSES: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
INVOCATION_ERRORS = (400, 401, 403, 405, 413, 415, 429, 502, 503, 504)
DESCRIPTION = (
    "Prices residential properties in Santiago, Chile, in UF (Unidad de Fomento). "
    "The gateway checks the API key, the body's size, content type and shape, forwards the "
    "request to the MLflow model server and answers its predictions: each price with a range "
    "meant to hold 80% of real prices (`price_low` to `price_high`). Every answer carries "
    "`X-Request-ID` (yours if you sent a sane one) and `X-Model-Version`. Every failure is "
    'JSON: `{"error_code", "message", "errors"?, "request_id"}`.'
)
PREDICTION_EXAMPLE = {
    PREDICTION_COLUMN: TARGET.example,
    LOW_COLUMN: 11_165.0,
    HIGH_COLUMN: 18_850.0,
    FLAG_COLUMN: "",
}


def _package_version() -> str:
    try:
        return version("property-friends")
    except PackageNotFoundError:
        return "0.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _listing_schema() -> dict[str, Any]:
    """JSON Schema of one listing, straight from pyfunc.schema."""
    properties: dict[str, Any] = {
        cat.name: {"type": "string", "description": cat.description, "example": cat.example}
        for cat in CATEGORICAL_FEATURES
    }
    for num in NUMERIC_FEATURES:
        unit = f" Unit: {num.unit}." if num.unit else ""
        bounds: dict[str, Any] = {"minimum": num.minimum, "maximum": num.maximum}
        if num.unreported is not None:
            bounds = {"anyOf": [bounds, {"const": num.unreported}]}
            unit += f" {num.unreported:g} means not reported: priced, and flagged in {FLAG_COLUMN}."
        properties[num.name] = {
            "type": "integer" if num.integral else "number",  # JSON Schema: 3.0 is an integer
            **bounds,
            "description": num.description + unit,
            "example": num.example,
        }
    return {
        "type": "object",
        "properties": properties,
        "required": list(FEATURE_NAMES),
        "additionalProperties": False,
    }


def _format_schemas() -> dict[str, Any]:
    """One schema per body format of the MLflow scoring protocol, each with optional params."""
    rows = {"type": "array", "minItems": 1, "items": _ref("Listing")}
    split = {
        "type": "object",
        "required": ["columns", "data"],
        "properties": {
            "columns": {"type": "array", "items": {"type": "string", "enum": list(FEATURE_NAMES)}},
            "data": {"type": "array", "minItems": 1, "items": {"type": "array"}},
            "index": {"type": "array"},
        },
    }
    columns = {
        "type": "object",
        "required": list(FEATURE_NAMES),
        "additionalProperties": False,
        "properties": {
            name: {"type": "array", "minItems": 1, "items": _ref(f"Listing/properties/{name}")}
            for name in FEATURE_NAMES
        },
    }
    params = {
        "type": "object",
        "description": "Model parameters, passed to the model as is, "
        'e.g. {"on_unknown_category": "flag"}.',
    }
    listing_ids = {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": LISTING_ID_MAX},
        "description": "Optional: your id of each listing, one per row (not sent to the "
        "model); POST /outcomes can then name a listing by it.",
    }
    formats = {
        "DataframeSplit": (DF_SPLIT, split, "pandas `split` orientation."),
        "DataframeRecords": (DF_RECORDS, rows, "One object per row."),
        "Inputs": (
            INPUTS,
            columns,
            "Columns: one list of values per feature, all of the same length.",
        ),
        "Instances": (INSTANCES, rows, "TF-serving rows; same as dataframe_records."),
    }
    return {
        name: {
            "type": "object",
            "description": description,
            "required": [key],
            "additionalProperties": False,
            "properties": {key: body, PARAMS: params, LISTING_IDS: listing_ids},
        }
        for name, (key, body, description) in formats.items()
    }


def _request_examples() -> dict[str, Any]:
    """One example body per format, built from the schema's example listing."""
    listing = example_listing()
    rows = [listing, {**listing, "type": "casa", "net_usable_area": 250.0, "net_area": 600.0}]
    table = [[row[name] for name in FEATURE_NAMES] for row in rows]
    columns = {name: [row[name] for row in rows] for name in FEATURE_NAMES}
    return {
        DF_SPLIT: {
            "summary": "dataframe_split",
            "value": {DF_SPLIT: {"columns": list(FEATURE_NAMES), "data": table}},
        },
        DF_RECORDS: {"summary": "dataframe_records", "value": {DF_RECORDS: rows}},
        INPUTS: {"summary": "inputs (columns)", "value": {INPUTS: columns}},
    }


def _other_schemas() -> dict[str, Any]:
    string, number = {"type": "string"}, {"type": "number"}
    answer = {
        PREDICTION_COLUMN: {**number, "description": f"{TARGET.description} Unit: {TARGET.unit}."},
        LOW_COLUMN: {
            **number,
            "description": "Low end of the price range (UF): the range holds the real price "
            "of 80% of listings like this one (the model's calibrated coverage).",
        },
        HIGH_COLUMN: {**number, "description": "High end of the price range (UF)."},
        FLAG_COLUMN: {
            **string,
            "description": "Comma-separated features whose value the price has little "
            "support for: inside the physical bounds but outside the training data's range, "
            "or not reported (0 bathrooms, 0 net area); empty if none.",
        },
    }
    prediction = {"type": "object", "properties": answer}
    field_error = {"field": string, "row": {"type": ["integer", "null"]}, "message": string}
    return {
        "Listing": _listing_schema(),
        "Predictions": {
            "type": "object",
            "required": ["predictions"],
            "properties": {"predictions": {"type": "array", "items": prediction}},
            "example": {"predictions": [PREDICTION_EXAMPLE]},
        },
        "Error": {
            "type": "object",
            "required": ["error_code", "message"],
            "properties": {
                "error_code": {"type": "string", "enum": list(ERROR_CODES)},
                "message": string,
                "errors": {"type": "array", "items": {"type": "object", "properties": field_error}},
                "request_id": string,
            },
        },
        "ModelInfo": {
            "type": "object",
            "properties": {
                **{name: string for name in ("name", "version", "alias", "uri", "run_id")},
                "served_since": string,
                "metrics": {"type": "object", "additionalProperties": number},
            },
        },
        "Status": {"type": "object", "properties": {"status": string, "model_version": string}},
    }


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, name in ERROR_RESPONSES.items():
        codes = {code: text for code, (s, text) in ERROR_CODES.items() if s == status}
        examples = {
            code: {"summary": text, "value": {"error_code": code, "message": text}}
            for code, text in codes.items()
        }
        responses[name] = {
            "x-status": status,
            "description": " ".join(codes.values()) or name,
            "content": {"application/json": {"schema": _ref("Error"), "examples": examples}},
        }
    responses[ERROR_RESPONSES[429]]["headers"] = {
        "Retry-After": {
            "schema": {"type": "integer", "minimum": 1},
            "description": "Seconds to wait before the key's next request may pass.",
        }
    }
    return responses


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/{ERROR_RESPONSES[s]}"} for s in statuses}


def _ok(description: str, schema: dict[str, Any], media: str = "application/json") -> dict:
    return {"200": {"description": description, "content": {media: {"schema": schema}}}}


def _get(
    operation_id: str, summary: str, ok: dict, errors: tuple[int, ...] = (), public: bool = True
) -> dict:
    """A GET operation answering `ok` or the error responses of `errors` (statuses)."""
    security: dict[str, Any] = {"security": []} if public else {}
    operation = {"summary": summary, "operationId": operation_id, **security}
    return {"get": {**operation, "responses": {**ok, **_errors(*errors)}}}


def _invocations() -> dict[str, Any]:
    request_id = {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "description": "Your id for this request; generated when absent or not sane.",
    }
    formats = ("DataframeSplit", "DataframeRecords", "Inputs", "Instances")
    body = {"schema": {"oneOf": [_ref(name) for name in formats]}, "examples": _request_examples()}
    answer = {
        "description": "One prediction per row, in UF.",
        "headers": {
            name: {"schema": {"type": "string"}} for name in ("X-Request-ID", "X-Model-Version")
        },
        "content": {"application/json": {"schema": _ref("Predictions")}},
    }
    return {
        "post": {
            "summary": "Price listings",
            "operationId": "invocations",
            "parameters": [request_id],
            "description": "MLflow scoring protocol: send exactly one of dataframe_split, "
            "dataframe_records, inputs (or instances). One prediction per row.",
            "requestBody": {"required": True, "content": {"application/json": body}},
            "responses": {"200": answer, **_errors(*INVOCATION_ERRORS)},
        }
    }


def _outcome_schemas() -> dict[str, Any]:
    """The body of POST /outcomes and its answer."""
    string, date = {"type": "string"}, {"type": "string", "format": "date"}
    outcome = {
        "type": "object",
        "required": ["price", "date"],
        "additionalProperties": False,
        "properties": {
            "request_id": {**string, "pattern": outcomes.ID_PATTERN.pattern},
            "row": {"type": "integer", "minimum": 0},
            "listing_id": {**string, "minLength": 1, "maxLength": outcomes.LISTING_ID_MAX},
            "price": {"type": "number", "minimum": TARGET.minimum, "maximum": TARGET.maximum},
            "date": date,
        },
        "description": "request_id (the valuation's X-Request-ID) and row, or listing_id (the "
        "latest valuation sent with it in listing_ids); the realized price (UF) and its date.",
    }
    result = {
        "type": "object",
        "properties": {
            "status": {"enum": [outcomes.CREATED, outcomes.DUPLICATE, outcomes.CORRECTED,
                                outcomes.UNKNOWN]},
            "request_id": {"type": ["string", "null"]},
            "row": {"type": ["integer", "null"]},
            "listing_id": string,
        },
    }  # fmt: skip
    counts = {s: {"type": "integer"} for s in ("created", "duplicate", "corrected", "unknown")}
    return {
        "Outcomes": {
            "type": "object",
            "required": ["outcomes"],
            "additionalProperties": False,
            "properties": {
                "outcomes": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": outcomes.MAX_OUTCOMES,
                    "items": outcome,
                }
            },
        },
        "OutcomeResults": {
            "type": "object",
            "properties": {**counts, "results": {"type": "array", "items": result}},
        },
    }


def _outcomes() -> dict[str, Any]:
    example = {
        "outcomes": [{"request_id": "3f2a9c", "row": 0, "price": 14200, "date": "2026-11-30"}]
    }
    body = {"schema": _ref("Outcomes"), "example": example}
    return {
        "post": {
            "summary": "Realized prices of valued listings",
            "operationId": "outcomes",
            "description": "Each outcome is created, a duplicate (nothing changes), corrected "
            "(a new price or date replaces the stored one) or unknown (no such valuation: "
            "nothing stored).",
            "requestBody": {"required": True, "content": {"application/json": body}},
            "responses": {
                **_ok("One result per outcome, in order.", _ref("OutcomeResults")),
                **_errors(400, 401, 403, 405, 413, 415, 503),
            },
        }
    }


def _paths(metrics_public: bool) -> dict[str, Any]:
    text, status = {"type": "string"}, _ref("Status")
    metrics_errors = () if metrics_public else (401, 403, 429)
    return {
        "/invocations": _invocations(),
        "/outcomes": _outcomes(),
        "/model": _get(
            "model",
            "The served model: name, version, alias, run, metrics",
            _ok("The served model.", _ref("ModelInfo")),
            (401, 403, 429, 503),
            public=False,
        ),
        "/health": _get("health", "The gateway is alive", _ok("Alive.", status)),
        "/ready": _get("ready", "The model server answers", _ok("Ready.", status), (503,)),
        "/metrics": _get(
            "metrics",
            "Prometheus metrics (text exposition format)",
            _ok("Metrics.", text, "text/plain"),
            metrics_errors,
            public=metrics_public,
        ),
        "/openapi.json": _get("openapi", "This document", {"200": {"description": "OpenAPI 3.1."}}),
        "/docs": _get(
            "docs",
            "Human-readable documentation (offline HTML)",
            _ok("HTML page.", text, "text/html"),
        ),
    }


def build_spec(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway."""
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": _package_version(), "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"ApiKeyHeader": []}, {"BearerAuth": []}],
        "paths": _paths(settings.gateway_metrics_public),
        "components": {
            "securitySchemes": {
                "ApiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "Your API key. A key may be limited to scopes, `predict` "
                    "(POST /invocations), `outcomes` (POST /outcomes) and `read` (GET /model, GET "
                    "/metrics): another endpoint "
                    "answers 403 FORBIDDEN_SCOPE; and to a request rate: over it, 429 "
                    "RATE_LIMITED with Retry-After.",
                },
                "BearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The same key as `Authorization: Bearer <key>`.",
                },
            },
            "schemas": {**_other_schemas(), **_format_schemas(), **_outcome_schemas()},
            "responses": _error_responses(),
        },
    }
