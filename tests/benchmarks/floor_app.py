"""The floor of `make bench`: what Flask under gunicorn costs before the gateway does anything.

One route, `POST /invocations`, that parses the JSON body and answers a fixed price: no key, no
check, no model server, no log, no metric. `make bench` starts it with the gateway's worker
class, workers, threads and keep-alive; its CPU per request is the part of the gateway's that
no gateway code can remove.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request

ANSWER = orjson.dumps({"predictions": [{"price": 10_000.0, "price_low": 8_000.0}]})
app = Flask(__name__)


@app.get("/ping")
def ping() -> Response:
    return Response(b"\n")


@app.post("/invocations")
def invocations() -> Response:
    orjson.loads(request.get_data())
    return Response(ANSWER, content_type="application/json")
