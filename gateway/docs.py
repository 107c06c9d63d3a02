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


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


def _pretty(value: object, depth: int = 0) -> str:
    """JSON with one row per line: objects near the top and lists of rows are expanded."""
    pad, end = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict) and depth < 2:
        items = [
            f"{pad}{orjson.dumps(k).decode()}: {_pretty(v, depth + 1)}" for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{end}}}"
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return "[\n" + ",\n".join(pad + orjson.dumps(v).decode() for v in value) + f"\n{end}]"
    return orjson.dumps(value).decode()


def _endpoints(spec: dict[str, Any]) -> str:
    rows = [
        [
            _code(method.upper()),
            _code(path),
            escape(op["summary"]),
            "public" if op.get("security", spec["security"]) == [] else "API key",
            escape(", ".join(op["responses"])),
        ]
        for path, operations in spec["paths"].items()
        for method, op in operations.items()
    ]
    return _table(["Method", "Path", "What", "Auth", "Statuses"], rows)


def _features(spec: dict[str, Any]) -> str:
    rows = []
    for name, field in spec["components"]["schemas"]["Listing"]["properties"].items():
        bounds = field.get("anyOf", [field])[0]  # a "not reported" value: in the description
        low, high = (f"{bounds[k]:g}" if k in bounds else "" for k in ("minimum", "maximum"))
        text = [field["type"], low, high, field["description"]]
        rows.append([_code(name), *map(escape, text), _code(str(field["example"]))])
    return _table(["Feature", "Type", "Min", "Max", "Description", "Example"], rows)


def _answer_fields(spec: dict[str, Any]) -> str:
    prediction = spec["components"]["schemas"]["Predictions"]["properties"]["predictions"]
    rows = [
        [_code(name), escape(field["type"]), escape(field["description"])]
        for name, field in prediction["items"]["properties"].items()
    ]
    return _table(["Field", "Type", "Description"], rows)


def _errors(spec: dict[str, Any]) -> str:
    rows = [
        [str(response["x-status"]), _code(code), escape(example["summary"])]
        for response in spec["components"]["responses"].values()
        for code, example in response["content"]["application/json"]["examples"].items()
    ]
    return _table(["Status", "error_code", "Meaning"], rows)


def _examples(spec: dict[str, Any]) -> dict[str, Any]:
    body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]
    return body["examples"]


def _formats(spec: dict[str, Any]) -> str:
    return "".join(
        f"<h3>{escape(example['summary'])}</h3><pre>{escape(_pretty(example['value']))}</pre>"
        for example in _examples(spec).values()
    )


def _curl(spec: dict[str, Any], base_url: str) -> str:
    rows = _examples(spec)["dataframe_records"]["value"]["dataframe_records"]
    data = orjson.dumps({"dataframe_records": rows[:1]}).decode()
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
        f"<p>Answer, one record per listing:</p><pre>{escape(_pretty(predictions))}</pre>"
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
