"""GET /openapi.json and GET /docs: complete, built from pyfunc.schema, offline."""

from __future__ import annotations

import re
from html import escape

import pytest

from gateway.app import create_app, gateway_of
from gateway.errors import ERROR_CODES
from gateway.keyfile import ALL_SCOPES
from pyfunc.schema import CATEGORICAL_FEATURES, FEATURE_NAMES, NUMERIC_FEATURES
from tests.support.gateway import gateway_settings

ENDPOINTS = {
    ("post", "/invocations"),
    ("post", "/outcomes"),
    ("get", "/model"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
}


@pytest.fixture
def spec(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    return response.json


def resolve(spec: dict, ref: str) -> dict:
    node = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def all_refs(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in all_refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_refs(value)]
    return []


def test_document_is_openapi_31_with_every_endpoint(app, spec):
    assert spec["openapi"] == "3.1.0"
    assert {"title", "version", "description"} <= set(spec["info"])
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert documented == ENDPOINTS
    served = {
        (m.lower(), r.rule)
        for r in app.url_map.iter_rules()
        for m in r.methods
        if m in ("GET", "POST") and r.endpoint != "static"
    }
    assert served == ENDPOINTS


def test_every_reference_resolves(spec):
    refs = all_refs(spec)
    assert refs
    for ref in refs:
        assert isinstance(resolve(spec, ref), dict), ref


def test_security_schemes_cover_both_headers(spec):
    schemes = spec["components"]["securitySchemes"]
    header = schemes["ApiKeyHeader"]
    assert {k: header[k] for k in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert all(f"`{scope}` (" in header["description"] for scope in ALL_SCOPES)
    assert schemes["BearerAuth"]["type"] == "http"
    assert schemes["BearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"ApiKeyHeader": []}, {"BearerAuth": []}]
    public = {
        p for p, ops in spec["paths"].items() for op in ops.values() if op.get("security") == []
    }
    assert public == {"/health", "/ready", "/metrics", "/openapi.json", "/docs"}


def test_listing_schema_matches_pyfunc_schema(spec):
    listing = spec["components"]["schemas"]["Listing"]
    assert list(listing["properties"]) == list(FEATURE_NAMES)
    assert listing["required"] == list(FEATURE_NAMES)
    for feature in CATEGORICAL_FEATURES:
        field = listing["properties"][feature.name]
        assert field == {
            "type": "string",
            "description": feature.description,
            "example": feature.example,
        }
    for feature in NUMERIC_FEATURES:
        field = listing["properties"][feature.name]
        assert field["type"] == ("integer" if feature.integral else "number")
        bounds = {"minimum": feature.minimum, "maximum": feature.maximum}
        if feature.unreported is None:
            assert {k: field[k] for k in bounds} == bounds
        else:
            assert field["anyOf"] == [bounds, {"const": feature.unreported}]
            assert "minimum" not in field
        assert field["description"].startswith(feature.description)
        assert feature.minimum <= field["example"] <= feature.maximum


def test_values_not_reported_are_documented_as_priced_and_flagged(spec):
    listing = spec["components"]["schemas"]["Listing"]["properties"]
    bathrooms, usable = listing["n_bathroom"], listing["net_usable_area"]

    assert bathrooms["anyOf"] == [{"minimum": 1, "maximum": 20}, {"const": 0}]
    assert bathrooms["description"] == (
        "Number of bathrooms. 0 means not reported: priced, and flagged in outside_training_range."
    )
    assert (usable["minimum"], usable["maximum"], "anyOf" in usable) == (10, 5000, False)
    prediction = spec["components"]["schemas"]["Predictions"]["properties"]["predictions"]
    flag = prediction["items"]["properties"]["outside_training_range"]["description"]
    assert "or not reported (0 bathrooms, 0 net area)" in flag


def test_request_body_documents_three_formats_with_valid_examples(spec):
    content = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]
    refs = [one["$ref"].rsplit("/", 1)[-1] for one in content["schema"]["oneOf"]]
    assert refs == ["DataframeSplit", "DataframeRecords", "Inputs", "Instances"]
    examples = content["examples"]
    assert set(examples) == {"dataframe_split", "dataframe_records", "inputs"}
    assert examples["dataframe_split"]["value"]["dataframe_split"]["columns"] == list(FEATURE_NAMES)
    for row in examples["dataframe_records"]["value"]["dataframe_records"]:
        assert list(row) == list(FEATURE_NAMES)
    assert list(examples["inputs"]["value"]["inputs"]) == list(FEATURE_NAMES)


def test_every_error_response_uses_the_error_schema(spec):
    responses = spec["components"]["responses"]
    documented = {
        code for r in responses.values() for code in r["content"]["application/json"]["examples"]
    }
    assert documented == set(ERROR_CODES)
    for response in responses.values():
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    statuses = set(spec["paths"]["/invocations"]["post"]["responses"])
    assert statuses == {"200", "400", "401", "403", "405", "413", "415", "429", "502", "503", "504"}
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error_code", "message"]
    assert error["properties"]["error_code"]["enum"] == list(ERROR_CODES)


def test_metrics_require_a_key_in_the_document_when_not_public(tmp_path):
    app = create_app(gateway_settings(tmp_path, GATEWAY_METRICS_PUBLIC="false"))
    metrics = app.test_client().get("/openapi.json").json["paths"]["/metrics"]["get"]
    assert "security" not in metrics
    assert set(metrics["responses"]) == {"200", "401", "403", "429"}
    gateway_of(app).close()


def test_docs_page_is_self_contained(app):
    response = app.test_client().get("/docs")
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    page = response.get_data(as_text=True)
    hosts = set(re.findall(r"(?:https?:)?//([^/\s\"'<>]+)", page))
    assert hosts <= {"localhost", "127.0.0.1"}
    assert "<script" not in page
    assert "<link" not in page


def test_docs_page_shows_fields_bounds_and_a_curl_example(app):
    page = app.test_client().get("/docs").get_data(as_text=True)
    for feature in NUMERIC_FEATURES:
        assert f"<code>{feature.name}</code>" in page
        assert f"<td>{feature.maximum:g}</td>" in page
    assert "curl -s http://localhost/invocations" in page
    for code in ERROR_CODES:
        assert f"<code>{code}</code>" in page


def test_the_answer_documents_each_price_with_its_range(spec, app):
    answer = resolve(
        spec,
        spec["paths"]["/invocations"]["post"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]["$ref"],
    )
    fields = answer["properties"]["predictions"]["items"]["properties"]
    assert list(fields) == ["price", "price_low", "price_high", "outside_training_range"]
    assert "80%" in fields["price_low"]["description"]
    example = answer["example"]["predictions"][0]
    assert example["price_low"] < example["price"] < example["price_high"]
    page = app.test_client().get("/docs").get_data(as_text=True)
    for name in fields:
        assert f"<code>{name}</code>" in page
    assert escape(fields["price_low"]["description"]) in page
