"""The floor of `make bench`: the least a Flask app under gunicorn in front of the model server
costs, before any of the gateway's own work.

`POST /invocations` parses the JSON body, sends it to one model server (FLOOR_UPSTREAM_URL)
with the gateway's own client (`gateway.upstream.Upstream`: keep-alive connections, one retry
on a dropped one), and returns its answer: no key, no check, no log, no metric, no pool.
`make bench` starts it with the gateway's worker class, workers, connections and keep-alive;
what the gateway spends above it is the gateway's own.
"""

from __future__ import annotations

import os

import orjson
from flask import Flask, Response, request

from gateway.upstream import Upstream

UPSTREAM = Upstream(
    os.environ.get("FLOOR_UPSTREAM_URL", "http://127.0.0.1:5001"), 2.0, 30.0, pool_size=100
)
app = Flask(__name__)


@app.get("/ping")
def ping() -> Response:
    return Response(b"\n")


@app.post("/invocations")
def invocations() -> Response:
    body = request.get_data()
    orjson.loads(body)
    answer = UPSTREAM.predict(body, "application/json", "floor")
    return Response(answer.body, answer.status, content_type=answer.content_type)
