"""Traffic for the gateway: listings to price, posting them, and reading back what the gateway
counted (its /metrics) and logged (its request log)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from prometheus_client.parser import text_string_to_metric_families

from pyfunc.schema import FEATURE_NAMES, example_listing
from tests.support.gateway import ALICE_KEY, RunningGateway, read_log

if TYPE_CHECKING:
    import pandas as pd

ALICE = {"X-API-Key": ALICE_KEY}


def listings(n: int) -> list[dict]:
    return [{**example_listing(), "net_usable_area": 60.0 + 20 * i} for i in range(n)]


def post(url: str, body: object, headers: dict | None = None) -> requests.Response:
    return requests.post(
        f"{url}/invocations",
        data=json.dumps(body),
        timeout=30,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def requests_total(gateway: RunningGateway, endpoint: str = "/invocations") -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(gateway.metrics_text())
        if family.name == "gateway_requests"
        for s in family.samples
        if s.name == "gateway_requests_total" and s.labels["endpoint"] == endpoint
    )


def metric(gateway: RunningGateway, name: str) -> float | None:
    for family in text_string_to_metric_families(gateway.metrics_text()):
        for s in family.samples:
            if s.name == name:
                return s.value
    return None


def settled_lines(gateway: RunningGateway, quiet: float = 0.3) -> list[dict]:
    """The /invocations lines of the request log once no new line came for `quiet` seconds
    (each worker's writer lingers 10 ms before writing)."""
    previous: list[dict] = []
    while True:
        time.sleep(quiet)
        lines = [line for line in read_log(gateway.request_log) if line["path"] == "/invocations"]
        if len(lines) == len(previous):
            return lines
        previous = lines


def write_log(path: Path, frames: list[pd.DataFrame], status: int = 200) -> None:
    """Request-log lines as the gateway writes them: features as columns."""
    with path.open("a") as log:
        for frame in frames:
            features = {name: frame[name].tolist() for name in FEATURE_NAMES}
            log.write(
                json.dumps({"status": status, "path": "/invocations", "features": features}) + "\n"
            )
