"""The Grafana dashboard against a real Prometheus: every panel's query returns data.

No Grafana here, so the dashboard is checked through what it would ask: a real Prometheus
(Debian package) scrapes a real gateway (gunicorn, 2 workers, multiprocess metrics) in front of
the real model server every second; after varied traffic, each `expr` of
docker/grafana/dashboards/gateway.json goes through Prometheus' HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from pyfunc.drift import MIN_ROWS
from pyfunc.schema import FEATURE_NAMES
from pyfunc.settings import PROJECT_DIR
from tests.support.gateway import ALICE_KEY, RunningGateway, running_gateway
from tests.support.processes import free_port, running

pytestmark = pytest.mark.integration

PROMETHEUS = Path("/usr/bin/prometheus")
INSTALL = "apt-get update && apt-get install -y prometheus"
DASHBOARD = PROJECT_DIR / "docker" / "grafana" / "dashboards" / "gateway.json"
# Grafana fills these in; Prometheus would refuse them. None is used today (test_docker).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
SCRAPE_SECONDS = 1
ALICE = {"X-API-Key": ALICE_KEY}
SINGLE_ROWS, BATCH_ROWS, BATCHES = 20, 60, 12
ROWS = SINGLE_ROWS + BATCH_ROWS * BATCHES  # every one of them priced


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, collapsed rows included."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found.append((inner["title"], expr))
    return found


@contextlib.contextmanager
def running_prometheus(workdir: Path, target: str) -> Iterator[str]:
    """Prometheus scraping `target` (host:port) every second; its URL, stopped at the end."""
    if not PROMETHEUS.is_file():
        pytest.fail(f"Prometheus is not installed ({PROMETHEUS} is missing): {INSTALL}")
    config = workdir / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  scrape_timeout: {SCRAPE_SECONDS}s\n"
        f"scrape_configs:\n  - job_name: gateway\n    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(command, f"{url}/-/ready", workdir / "prometheus.log", timeout=30):
        yield url


def query(prometheus: str, expr: str) -> list[dict]:
    """The instant vector (or scalar) `expr` evaluates to now; fails on a PromQL error."""
    response = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    answer = response.json()
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    result = answer["data"]["result"]
    return result if answer["data"]["resultType"] == "vector" else [{"value": result}]


def wait_for(prometheus: str, expr: str, timeout: float) -> None:
    """Wait until `expr` has a result (a filter such as `... == 3` holds)."""
    deadline = time.monotonic() + timeout
    while not query(prometheus, expr):
        assert time.monotonic() < deadline, f"still no result after {timeout:.0f} s: {expr}"
        time.sleep(SCRAPE_SECONDS / 4)


def value(prometheus: str, expr: str) -> float:
    (sample,) = query(prometheus, expr)
    return float(sample["value"][1])


def by_label(prometheus: str, expr: str, label: str) -> dict[str, float]:
    """The value of each series of `expr`, by the value of its `label`."""
    return {s["metric"][label]: float(s["value"][1]) for s in query(prometheus, expr)}


def scrapes(prometheus: str) -> int:
    """How many times Prometheus has scraped the gateway so far."""
    return int(value(prometheus, 'count_over_time(up{job="gateway"}[1h])'))


def send_traffic(gateway: RunningGateway) -> int:
    """Priced rows (singles and batches), refusals and errors of every kind; the number of
    /invocations requests sent."""
    from steps.generate import generate_listings

    rows = generate_listings(ROWS, 11, dirty=False)[list(FEATURE_NAMES)].to_dict("records")
    singles = [{"dataframe_records": [row]} for row in rows[:SINGLE_ROWS]]
    batches = [
        {
            "dataframe_split": {
                "columns": list(FEATURE_NAMES),
                "data": [
                    [row[n] for n in FEATURE_NAMES] for row in rows[start : start + BATCH_ROWS]
                ],
            }
        }
        for start in range(SINGLE_ROWS, ROWS, BATCH_ROWS)
    ]
    bad_type = {**rows[0], "net_area": "120"}  # refused by the gateway
    bad_bound = {**rows[0], "net_area": -5.0}  # refused by the model server
    refused = [
        ({"dataframe_records": [bad_type]}, ALICE, 400),
        ({"dataframe_records": [rows[1], bad_bound]}, ALICE, 400),
        ({"dataframe_records": [{**rows[2], "sector": "marte"}]}, ALICE, 400),
        ({"dataframe_records": rows[:1]}, {}, 401),
        ({"dataframe_records": rows[:1]}, {"X-API-Key": "wrong"}, 403),
        ({"dataframe_records": rows[:1]}, {"Authorization": "Bearer wrong"}, 403),
    ]
    calls = [(body, ALICE, 200) for body in [*singles, *batches]] + refused

    def post(call: tuple[dict, dict, int]) -> None:
        body, headers, status = call
        response = requests.post(
            f"{gateway.url}/invocations",
            data=json.dumps(body),
            timeout=30,
            headers={"Content-Type": "application/json", **headers},
        )
        assert response.status_code == status, response.text

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(post, calls))
    assert requests.get(f"{gateway.url}/no/such/page", timeout=5).status_code == 404
    assert (
        requests.post(
            f"{gateway.url}/invocations", data=b"{}", headers=ALICE, timeout=5
        ).status_code
        == 415
    )
    for path in ("/health", "/ready", "/model"):
        assert requests.get(f"{gateway.url}{path}", headers=ALICE, timeout=5).status_code == 200
    return len(calls) + 1


def test_every_dashboard_query_returns_data(model_server, tmp_path):
    started = time.monotonic()
    queries = dashboard_queries()
    assert any("gateway_feature_drift" in expr for _, expr in queries)
    assert ROWS >= 2 * MIN_ROWS  # one of the 2 workers at least gets enough to score
    with (
        running_gateway(
            tmp_path / "gateway", model_server.url, info_path=model_server.info_path, workers=2
        ) as gateway,
        running_prometheus(tmp_path, f"127.0.0.1:{gateway.port}") as prometheus,
    ):
        wait_for(prometheus, 'up{job="gateway"} == 1', timeout=15)
        invocations = send_traffic(gateway)
        # Every count scraped, then three more scrapes: the drift monitor scores its last
        # rows within a second, and every rate() has samples on both sides of the traffic.
        wait_for(prometheus, f"sum(gateway_rows_predicted_total) == {ROWS}", timeout=15)
        wait_for(
            prometheus,
            f'sum(gateway_requests_total{{endpoint="/invocations"}}) == {invocations}',
            timeout=15,
        )
        wait_for(
            prometheus,
            f'count_over_time(up{{job="gateway"}}[1h]) >= {scrapes(prometheus) + 3}',
            timeout=15,
        )

        empty = [(title, expr) for title, expr in queries if not query(prometheus, expr)]
        assert not empty, "panels without data:\n" + "\n".join(map(": ".join, empty))
        assert value(prometheus, "sum(rate(gateway_rows_predicted_total[5m]))") > 0
        assert value(prometheus, "sum(rate(gateway_auth_failures_total[5m]))") > 0
        assert by_label(prometheus, "gateway_auth_failures_total > 0", "reason") == {
            "missing": 1,
            "invalid": 2,
        }
        assert by_label(prometheus, "gateway_validation_errors_total > 0", "field") == {
            "net_area": 2,
            "sector": 1,
        }
        served = json.loads(model_server.info_path.read_text())["version"]
        assert [s["metric"]["version"] for s in query(prometheus, "gateway_model_info == 1")] == [
            served
        ]
        drift = by_label(prometheus, "gateway_feature_drift", "feature")
        assert set(drift) == set(FEATURE_NAMES)
        assert all(score >= 0 for score in drift.values()), drift
    assert time.monotonic() - started < 60
