"""The floor of `make bench`: the least a Flask app under gunicorn in front of the model server
costs, before any of the gateway's own work.

`POST /invocations` parses the JSON body and sends it to one model server (FLOOR_UPSTREAM_URL)
on a keep-alive `http.client` connection per client connection (a greenlet under the gateway's
worker), and returns its answer: no key, no check, no log, no metric, no pool. `make bench`
starts it with the gateway's worker class, workers, connections and keep-alive; what the
gateway spends above it is the gateway's own.
"""

from __future__ import annotations

import http.client
import os
import threading
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, request

UPSTREAM = urlsplit(os.environ.get("FLOOR_UPSTREAM_URL", "http://127.0.0.1:5001"))
app = Flask(__name__)
_connections = threading.local()


def _connection() -> http.client.HTTPConnection:
    if not hasattr(_connections, "upstream"):
        _connections.upstream = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port)
    return _connections.upstream


@app.get("/ping")
def ping() -> Response:
    return Response(b"\n")


@app.post("/invocations")
def invocations() -> Response:
    body = request.get_data()
    orjson.loads(body)
    upstream = _connection()
    try:
        answer = _send(upstream, body)
    except ConnectionError:  # the model server closed the idle connection: once more, anew
        upstream.close()
        answer = _send(upstream, body)
    return Response(answer.read(), answer.status, content_type="application/json")


def _send(upstream: http.client.HTTPConnection, body: bytes) -> http.client.HTTPResponse:
    upstream.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    return upstream.getresponse()
