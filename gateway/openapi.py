"""The gateway's OpenAPI 3.1 document, built from `pyfunc.schema` (names, types, bounds,
descriptions, examples) and from the gateway's error table, so it cannot drift from the code.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gateway.errors import ERROR_CODES
from gateway.validation import DF_RECORDS, DF_SPLIT, INPUTS, INSTANCES, PARAMS
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
from pyfunc.settings import Settings

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
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
INVOCATION_ERRORS = (400, 401, 403, 405, 413, 415, 502, 503, 504)
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


def feature_schema() -> dict[str, Any]:
    """JSON Schema of one listing, straight from pyfunc.schema."""
    properties: dict[str, Any] = {}
    for cat in CATEGORICAL_FEATURES:
        properties[cat.name] = {
            "type": "string",
            "description": cat.description,
            "example": cat.example,
        }
    for num in NUMERIC_FEATURES:
        unit = f" Unit: {num.unit}." if num.unit else ""
        kind = "integer" if num.integral else "number"  # JSON Schema: 3.0 is an integer too
        bounds: dict[str, Any] = {"minimum": num.minimum, "maximum": num.maximum}
        if num.unreported is not None:
            bounds = {"anyOf": [bounds, {"const": num.unreported}]}
            unit += f" {num.unreported:g} means not reported: priced, and flagged in {FLAG_COLUMN}."
        properties[num.name] = {
            "type": kind,
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
    listing = {"$ref": REF + "Listing"}
    column = {"type": "array", "minItems": 1, "items": {}}
    params = {
        "type": "object",
        "description": "Model parameters, passed to the model as is, "
        'e.g. {"on_unknown_category": "flag"}.',
    }
    return {
        "DataframeSplit": _envelope(
            DF_SPLIT,
            {
                "type": "object",
                "required": ["columns", "data"],
                "properties": {
                    "columns": {
                        "type": "array",
                        "items": {"type": "string", "enum": list(FEATURE_NAMES)},
                    },
                    "data": {"type": "array", "minItems": 1, "items": {"type": "array"}},
                    "index": {"type": "array"},
                },
            },
            params,
            "pandas `split` orientation.",
        ),
        "DataframeRecords": _envelope(
            DF_RECORDS,
            {"type": "array", "minItems": 1, "items": listing},
            params,
            "One object per row.",
        ),
        "Inputs": _envelope(
            INPUTS,
            {
                "type": "object",
                "required": list(FEATURE_NAMES),
                "additionalProperties": False,
                "properties": {
                    name: {**column, "items": {"$ref": f"{REF}Listing/properties/{name}"}}
                    for name in FEATURE_NAMES
                },
            },
            params,
            "Columns: one list of values per feature, all of the same length.",
        ),
        "Instances": _envelope(
            INSTANCES,
            {"type": "array", "minItems": 1, "items": listing},
            params,
            "TF-serving rows; same as dataframe_records.",
        ),
    }


def _envelope(key: str, body: dict[str, Any], params: dict, description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": [key],
        "additionalProperties": False,
        "properties": {key: body, PARAMS: params},
    }


def request_examples() -> dict[str, Any]:
    """One example body per format, built from the schema's example listing."""
    listing = example_listing()
    second = {**listing, "type": "casa", "net_usable_area": 250.0, "net_area": 600.0}
    rows = [listing, second]
    table = [[r[n] for n in FEATURE_NAMES] for r in rows]
    return {
        DF_SPLIT: {
            "summary": "dataframe_split",
            "value": {DF_SPLIT: {"columns": list(FEATURE_NAMES), "data": table}},
        },
        DF_RECORDS: {"summary": "dataframe_records", "value": {DF_RECORDS: rows}},
        INPUTS: {
            "summary": "inputs (columns)",
            "value": {INPUTS: {n: [r[n] for r in rows] for n in FEATURE_NAMES}},
        },
    }


def _other_schemas() -> dict[str, Any]:
    prediction = {
        "type": "object",
        "properties": {
            PREDICTION_COLUMN: {
                "type": "number",
                "description": f"{TARGET.description} Unit: {TARGET.unit}.",
            },
            LOW_COLUMN: {
                "type": "number",
                "description": "Low end of the price range (UF): the range holds the real price "
                "of 80% of listings like this one (the model's calibrated coverage).",
            },
            HIGH_COLUMN: {"type": "number", "description": "High end of the price range (UF)."},
            FLAG_COLUMN: {
                "type": "string",
                "description": "Comma-separated features whose value the price has little "
                "support for: inside the physical bounds but outside the training data's range, "
                "or not reported (0 bathrooms, 0 net area); empty if none.",
            },
        },
    }
    return {
        "Listing": feature_schema(),
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
                "message": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "field": {"type": "string"},
                            "row": {"type": ["integer", "null"]},
                            "message": {"type": "string"},
                        },
                    },
                },
                "request_id": {"type": "string"},
            },
        },
        "ModelInfo": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "alias": {"type": "string"},
                "uri": {"type": "string"},
                "run_id": {"type": "string"},
                "served_since": {"type": "string"},
                "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
        "Status": {
            "type": "object",
            "properties": {"status": {"type": "string"}, "model_version": {"type": "string"}},
        },
    }


def _error_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, name in ERROR_RESPONSES.items():
        codes = {code: text for code, (s, text) in ERROR_CODES.items() if s == status}
        responses[name] = {
            "x-status": status,
            "description": " ".join(codes.values()) or name,
            "content": {
                "application/json": {
                    "schema": {"$ref": REF + "Error"},
                    "examples": {
                        code: {"summary": text, "value": {"error_code": code, "message": text}}
                        for code, text in codes.items()
                    },
                }
            },
        }
    return responses


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/{ERROR_RESPONSES[s]}"} for s in statuses}


def _json_ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "200": {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": REF + schema}}},
        }
    }


def _paths(metrics_public: bool) -> dict[str, Any]:
    public: list = []
    ids = {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "description": "Your id for this request; generated when absent or not sane.",
    }
    answer_headers = {
        "X-Request-ID": {"schema": {"type": "string"}},
        "X-Model-Version": {"schema": {"type": "string"}},
    }
    invocations = {
        "post": {
            "summary": "Price listings",
            "operationId": "invocations",
            "parameters": [ids],
            "description": "MLflow scoring protocol: send exactly one of dataframe_split, "
            "dataframe_records, inputs (or instances). One prediction per row.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": REF + n}
                                for n in (
                                    "DataframeSplit",
                                    "DataframeRecords",
                                    "Inputs",
                                    "Instances",
                                )
                            ]
                        },
                        "examples": request_examples(),
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "One prediction per row, in UF.",
                    "headers": answer_headers,
                    "content": {"application/json": {"schema": {"$ref": REF + "Predictions"}}},
                },
                **_errors(*INVOCATION_ERRORS),
            },
        }
    }
    return {
        "/invocations": invocations,
        "/model": {
            "get": {
                "summary": "The served model: name, version, alias, run, metrics",
                "operationId": "model",
                "responses": {
                    **_json_ok("ModelInfo", "The served model."),
                    **_errors(401, 403, 503),
                },
            }
        },
        "/health": {
            "get": {
                "summary": "The gateway is alive",
                "operationId": "health",
                "security": public,
                "responses": _json_ok("Status", "Alive."),
            }
        },
        "/ready": {
            "get": {
                "summary": "The model server answers",
                "operationId": "ready",
                "security": public,
                "responses": {**_json_ok("Status", "Ready."), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "operationId": "metrics",
                **({"security": public} if metrics_public else {}),
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **({} if metrics_public else _errors(401, 403)),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": public,
                "responses": {"200": {"description": "OpenAPI 3.1."}},
            }
        },
        "/docs": {
            "get": {
                "summary": "Human-readable documentation (offline HTML)",
                "operationId": "docs",
                "security": public,
                "responses": {
                    "200": {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
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
                    "description": "Your API key.",
                },
                "BearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The same key as `Authorization: Bearer <key>`.",
                },
            },
            "schemas": {**_other_schemas(), **_format_schemas()},
            "responses": _error_responses(),
        },
    }
