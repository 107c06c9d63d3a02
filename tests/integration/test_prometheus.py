"""The Grafana dashboard and the alerting rules against a real Prometheus.

No Grafana here, so the dashboard is checked through what it would ask: a real Prometheus
(Debian package) scrapes every second a real gateway (gunicorn, 2 workers, multiprocess
metrics) and the real rollout controller serving the champion from a pool of one model
server; after varied traffic, each `expr` of docker/grafana/dashboards/gateway.json (panels and
annotations) goes through Prometheus' HTTP API, and every rule of
docker/prometheus/alerts.yml evaluates without error.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from config.settings import PROJECT_DIR
from pyfunc.drift import MIN_ROWS
from pyfunc.schema import FEATURE_NAMES
from tests.support.gateway import ALICE_KEY, RunningGateway, running_gateway
from tests.support.processes import free_port
from tests.support.prometheus import query, running_prometheus, wait_for
from tests.support.promql import GRAFANA_VARIABLES, with_grafana_values
from tests.support.rollout import running_controller
from tests.support.stack import store_env

pytestmark = pytest.mark.integration

DASHBOARD = PROJECT_DIR / "docker" / "grafana" / "dashboards" / "gateway.json"
ALICE = {"X-API-Key": ALICE_KEY}
SINGLE_ROWS, BATCH_ROWS, BATCHES = 20, 60, 12
ROWS = SINGLE_ROWS + BATCH_ROWS * BATCHES  # every one of them priced


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel, collapsed rows included, as
    Grafana sends it."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], with_grafana_values(target["expr"])))
    return found


def annotation_query(name: str) -> str:
    (annotation,) = [
        a for a in json.loads(DASHBOARD.read_text())["annotations"]["list"] if a["name"] == name
    ]
    return with_grafana_values(annotation["expr"])


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


def first_scrape(prometheus: str, job: str) -> float:
    """The time of the first sample Prometheus scraped from `job`."""
    (series,) = requests.get(
        f"{prometheus}/api/v1/query", params={"query": f'up{{job="{job}"}}[1h]'}, timeout=5
    ).json()["data"]["result"]
    return float(series["values"][0][0])


def test_every_dashboard_query_returns_data_and_every_rule_evaluates(trained_store, tmp_path):
    queries = dashboard_queries()
    assert any("gateway_feature_drift" in expr for _, expr in queries)
    assert ROWS >= 2 * MIN_ROWS  # one of the 2 workers at least gets enough to score
    controller_env = store_env(trained_store, MODEL_SERVERS="1", ROLLOUT_POLL_SECONDS="1")
    with running_controller(tmp_path / "controller", controller_env) as controller:
        served = controller.wait_served("1")["version"]
        publish_live_accuracy(tmp_path / "gateway", served)
        started = time.monotonic()
        with (
            running_gateway(
                tmp_path / "gateway",
                f"http://127.0.0.1:{free_port()}",  # the controller's file replaces it
                info_path=controller.info_path,
                workers=2,
            ) as gateway,
            running_prometheus(
                tmp_path,
                {
                    "gateway": f"127.0.0.1:{gateway.port}",
                    "controller": f"127.0.0.1:{controller.env['CONTROLLER_METRICS_PORT']}",
                },
            ) as prometheus,
        ):
            check_stack(prometheus, gateway, queries, served)
    assert time.monotonic() - started < 60


def publish_live_accuracy(state_dir: Path, version: str) -> None:
    """What the monitor's accuracy job publishes in the gateway's prediction store, figures
    that alert nothing: the live accuracy panel has data, its rules evaluate."""
    from steps.prediction_store import connect, publish

    store = connect(f"sqlite:///{state_dir}/predictions.db")
    publish(
        store,
        [
            (version, "all", "model_live_mae_uf", 1000.0),
            (version, "all", "model_live_coverage_ratio", 0.8),
            (version, "all", "model_live_outcomes", 100.0),
            (version, "", "model_test_mae_uf", 900.0),
            (version, "", "model_live_mae_limit_uf", 1350.0),
            ("", "", "model_live_min_outcomes", 30.0),
            ("", "", "model_live_coverage_band_ratio", 0.1),
            ("", "", "model_live_accuracy_updated_timestamp_seconds", time.time()),
        ],
    )
    store.dispose()


def check_stack(
    prometheus: str, gateway: RunningGateway, queries: list[tuple[str, str]], served: str
) -> None:
    """Traffic through the gateway, then every panel, annotation and rule on what Prometheus
    scraped."""
    wait_for(prometheus, 'up{job="gateway"} == 1', timeout=15)
    wait_for(prometheus, 'up{job="controller"} == 1', timeout=15)
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
    assert [s["metric"]["version"] for s in query(prometheus, "gateway_model_info == 1")] == [
        served
    ]
    assert by_label(prometheus, "model_rollouts_total", "result") == {
        "served": 1,
        "refused": 0,
        "failed": 0,
        "abandoned": 0,
    }
    assert by_label(prometheus, "max by (state) (gateway_pool_servers)", "state") == {
        "healthy": 1,
        "total": 1,
    }
    assert set(by_label(prometheus, "gateway_predicted_price_uf_count", "version")) == {served}
    drift = by_label(prometheus, "gateway_feature_drift", "feature")
    assert set(drift) == set(FEATURE_NAMES)
    assert all(score >= 0 for score in drift.values()), drift
    check_served_version_annotation(prometheus, served)
    check_rules_evaluate(prometheus)


def check_served_version_annotation(prometheus: str, served: str) -> None:
    """The annotation marks the version once, when the gateway began serving it."""
    changed = annotation_query("Served model version")
    began = first_scrape(prometheus, "gateway")
    interval = float(GRAFANA_VARIABLES["$__interval"].removesuffix("s"))
    wait_for(prometheus, f'count_over_time(up{{job="gateway"}}[1h]) >= {interval + 3}', 15)

    def at(moment: float) -> list[str]:
        return [s["metric"]["version"] for s in query(prometheus, changed, at=moment)]

    assert at(began) == [served]
    assert at(began + interval + 2) == []


def check_rules_evaluate(prometheus: str) -> None:
    """Every alerting rule evaluated on the real series without error, and none fires."""
    groups = requests.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 9
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
