"""GET /openapi.json and GET /docs: the API's documentation, both from one OpenAPI dict.

The HTML page is rendered on the server from that dict: no JavaScript, no CDN, no external
stylesheet, so it works offline and behind any firewall.
"""

from __future__ import annotations

from html import escape
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, request

from gateway.errors import JSON

STYLE = """body{font:15px/1.5 system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}th,td{border:1px solid
#ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f3f3f3}code,pre{
background:#f6f6f6;font:13px/1.4 ui-monospace,monospace}pre{padding:.7rem;overflow:auto}
h2{margin-top:2rem;border-bottom:1px solid #ddd}"""


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pretty(value: object) -> str:
    return escape(_layout(value, 0))


def _layout(value: object, depth: int) -> str:
    """JSON with one row per line: objects near the top and lists of rows are expanded."""
    pad, end = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict) and depth < 2:
        items = [
            f"{pad}{orjson.dumps(k).decode()}: {_layout(v, depth + 1)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return "[\n" + ",\n".join(pad + orjson.dumps(v).decode() for v in value) + f"\n{end}]"
    return orjson.dumps(value).decode()


def _endpoints(spec: dict[str, Any]) -> str:
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            needs_key = op.get("security", spec["security"]) != []
            rows.append(
                [
                    f"<code>{method.upper()}</code>",
                    f"<code>{escape(path)}</code>",
                    escape(op["summary"]),
                    "API key" if needs_key else "public",
                    escape(", ".join(op["responses"])),
                ]
            )
    return _table(["Method", "Path", "What", "Auth", "Statuses"], rows)


def _features(spec: dict[str, Any]) -> str:
    listing = spec["components"]["schemas"]["Listing"]
    rows = []
    for name, field in listing["properties"].items():
        bounds = field.get("anyOf", [field])[0]  # a "not reported" value: in the description
        rows.append(
            [
                f"<code>{escape(name)}</code>",
                escape(field["type"]),
                escape(f"{bounds['minimum']:g}") if "minimum" in bounds else "",
                escape(f"{bounds['maximum']:g}") if "maximum" in bounds else "",
                escape(field["description"]),
                f"<code>{escape(str(field['example']))}</code>",
            ]
        )
    return _table(["Feature", "Type", "Min", "Max", "Description", "Example"], rows)


def _answer_fields(spec: dict[str, Any]) -> str:
    prediction = spec["components"]["schemas"]["Predictions"]["properties"]["predictions"]
    rows = [
        [f"<code>{escape(name)}</code>", escape(field["type"]), escape(field["description"])]
        for name, field in prediction["items"]["properties"].items()
    ]
    return _table(["Field", "Type", "Description"], rows)


def _errors(spec: dict[str, Any]) -> str:
    rows = []
    for response in spec["components"]["responses"].values():
        examples = response["content"]["application/json"]["examples"]
        for code, example in examples.items():
            rows.append(
                [
                    str(response["x-status"]),
                    f"<code>{escape(code)}</code>",
                    escape(example["summary"]),
                ]
            )
    return _table(["Status", "error_code", "Meaning"], rows)


def _formats(spec: dict[str, Any]) -> str:
    body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]
    parts = []
    for example in body["examples"].values():
        parts.append(f"<h3>{escape(example['summary'])}</h3><pre>{_pretty(example['value'])}</pre>")
    return "".join(parts)


def _curl(spec: dict[str, Any], base_url: str) -> str:
    body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]
    example = body["examples"]["dataframe_records"]["value"]
    data = orjson.dumps({"dataframe_records": example["dataframe_records"][:1]}).decode()
    return escape(
        f"curl -s {base_url.rstrip('/')}/invocations \\\n"
        f"  -H \"X-API-Key: $API_KEY\" -H 'Content-Type: application/json' \\\n"
        f"  -d '{data}'"
    )


def render_docs(spec: dict[str, Any], base_url: str) -> str:
    """The documentation page for `spec`, with a curl example against `base_url`."""
    info = spec["info"]
    predictions = spec["components"]["schemas"]["Predictions"]["example"]
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info['title'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(info['title'])} <small>{escape(info['version'])}</small></h1>"
        f"<p>{escape(info['description'])}</p>"
        "<h2>Authentication</h2><p>Send your key in <code>X-API-Key: &lt;key&gt;</code> or "
        "<code>Authorization: Bearer &lt;key&gt;</code>. Missing key: 401, wrong key: 403.</p>"
        f"<h2>Try it</h2><pre>{_curl(spec, base_url)}</pre>"
        f"<p>Answer, one record per listing:</p><pre>{_pretty(predictions)}</pre>"
        f"{_answer_fields(spec)}"
        f"<h2>Endpoints</h2>{_endpoints(spec)}"
        f"<h2>Features</h2><p>One listing per row; bounds are inclusive.</p>{_features(spec)}"
        f"<h2>Request formats</h2>{_formats(spec)}"
        f'<h2>Errors</h2><p>Always JSON: <code>{{"error_code", "message", "errors"?, '
        f'"request_id"}}</code>; <code>errors</code> lists field, row (0-based) and message.'
        f"</p>{_errors(spec)}"
        '<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1).</p>'
        "</body></html>"
    )


def init_app(app: Flask, spec: dict[str, Any]) -> None:
    """Serve GET /openapi.json and GET /docs (public)."""
    blueprint = Blueprint("docs", __name__)
    document = orjson.dumps(spec)

    @blueprint.get("/openapi.json", endpoint="openapi")
    def openapi() -> Response:
        return Response(document, mimetype=JSON)

    @blueprint.get("/docs", endpoint="docs")
    def docs() -> Response:
        return Response(render_docs(spec, request.host_url), mimetype="text/html")

    app.register_blueprint(blueprint)
