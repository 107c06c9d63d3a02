"""Realized prices to live accuracy, on the real parts: the rollout controller serving the
champion from a pool of two model servers, the gateway (gunicorn, 2 workers) writing its
prediction store in a real PostgreSQL, POST /outcomes, the monitor's accuracy job, the gauges
on /metrics and a real Prometheus evaluating docker/prometheus/alerts.yml.

The realized prices are half the served ones (a model that overvalues by 100%): the monitor's
MAE must be the one computed here from the request log and the prices posted, and the live
accuracy alerts must fire."""

from __future__ import annotations

import contextlib
import json
import random
import statistics
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from pyfunc.schema import FEATURE_NAMES, normalize_category
from tests.support.gateway import ALICE_KEY, RunningGateway, metric_samples, running_gateway
from tests.support.postgres import running_postgres
from tests.support.processes import free_port, wait_until
from tests.support.prometheus import running_prometheus, wait_for
from tests.support.rollout import running_controller
from tests.support.stack import run_step, store_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTH = {"X-API-Key": ALICE_KEY, "Content-Type": "application/json"}
SINGLES, BATCHES, BATCH_ROWS, CLIENTS = 160, 24, 5, 8
REALIZED_SHARE = 0.6  # of the priced rows get a realized price
BIAS = 0.5  # realized price = BIAS * served price
UNKNOWN, DUPLICATES, CORRECTIONS = 7, 15, 5
DATE = "2026-11-30"


@contextlib.contextmanager
def prediction_store() -> Iterator[str]:
    """A database `predictions` on a fresh PostgreSQL; its URL."""
    with running_postgres() as admin_url:
        server = admin_url.removeprefix("postgresql+psycopg://").rsplit("/", 1)[0]
        with psycopg.connect(f"postgresql://{server}/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE predictions")
        yield f"postgresql://{server}/predictions"


def valuations() -> list[dict]:
    """Bodies: single listings, and batches whose rows carry listing ids."""
    from steps.generate import generate_listings

    rows = generate_listings(SINGLES + BATCHES * BATCH_ROWS, 5, dirty=False)
    records = rows[list(FEATURE_NAMES)].to_dict("records")
    bodies = [{"dataframe_records": [r]} for r in records[:SINGLES]]
    for b in range(BATCHES):
        batch = records[SINGLES + b * BATCH_ROWS : SINGLES + (b + 1) * BATCH_ROWS]
        ids = [f"L-{b}-{i}" for i in range(BATCH_ROWS)]
        bodies.append({"dataframe_records": batch, "listing_ids": ids})
    return bodies


def post_all(url: str, bodies: list[dict]) -> list[requests.Response]:
    """POST every body from CLIENTS threads at once; every answer."""
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(
            pool.map(
                lambda b: requests.post(url, data=json.dumps(b), headers=AUTH, timeout=30), bodies
            )
        )


def priced_rows(gateway: RunningGateway, answers: list[requests.Response]) -> list[dict]:
    """Every priced row, from the request log: request id, row, version, sector, price, and
    the listing id the client sent."""
    lines = {}
    for line in map(json.loads, gateway.request_log.read_text().splitlines()):
        if line["path"] == "/invocations" and line["status"] == 200:
            lines[line["request_id"]] = line
    rows = []
    for answer in answers:
        line = lines[answer.headers["X-Request-ID"]]
        body = json.loads(answer.request.body)
        for i, price in enumerate(line["predictions"]):
            rows.append({
                "request_id": line["request_id"], "row": i, "version": line["model_version"],
                "sector": normalize_category(line["features"]["sector"][i]), "price": price,
                "listing_id": (body.get("listing_ids") or [None] * (i + 1))[i],
            })  # fmt: skip
    return rows


def outcomes_for(rows: list[dict]) -> tuple[list[dict], dict[tuple, float]]:
    """Outcomes for a share of the rows (batch rows named by listing id), corrections sent
    first with a wrong price, unknown ones, duplicates; and the final realized price of each
    (request id, row)."""
    chosen = random.Random(3).sample(rows, int(len(rows) * REALIZED_SHARE))
    realized = {(r["request_id"], r["row"]): round(r["price"] * BIAS, 2) for r in chosen}

    def outcome(r: dict, price: float) -> dict:
        where = (
            {"listing_id": r["listing_id"]}
            if r["listing_id"]
            else {"request_id": r["request_id"], "row": r["row"]}
        )
        return {**where, "price": price, "date": DATE}

    final = [outcome(r, realized[(r["request_id"], r["row"])]) for r in chosen]
    wrong = [outcome(r, round(r["price"] * 0.9, 2)) for r in chosen[:CORRECTIONS]]
    unknown = [
        {"request_id": f"never-{i}", "row": 0, "price": 5000, "date": DATE}
        for i in range(UNKNOWN - 1)
    ]
    unknown.append({"listing_id": "never-sent", "price": 5000, "date": DATE})
    return wrong + final + unknown + final[-DUPLICATES:], realized


def post_outcomes(url: str, outcomes: list[dict]) -> Counter:
    """Send the outcomes in order, 50 per request (the corrections' wrong prices first);
    the count of each status."""
    statuses: Counter = Counter()
    for start in range(0, len(outcomes), 50):
        answer = requests.post(
            url, json={"outcomes": outcomes[start : start + 50]}, headers=AUTH, timeout=30
        )
        assert answer.status_code == 200, answer.text
        statuses.update(r["status"] for r in answer.json()["results"])
    return statuses


def stored_rows(store_url: str) -> int:
    with psycopg.connect(store_url) as db:
        return db.execute("SELECT count(*) FROM predictions").fetchone()[0]


def gauge(gateway: RunningGateway, name: str, **labels: str) -> float | None:
    return metric_samples(gateway).get((name, frozenset(labels.items())))


def test_realized_prices_become_live_accuracy_gauges_and_alerts(trained_store, tmp_path):
    env = store_env(trained_store, MODEL_SERVERS="2", ROLLOUT_POLL_SECONDS="1")
    with (
        prediction_store() as store_url,
        running_controller(tmp_path / "controller", env) as controller,
    ):
        version = controller.wait_served("1")["version"]
        with running_gateway(
            tmp_path / "gateway",
            f"http://127.0.0.1:{free_port()}",  # the controller's pool replaces it
            info_path=controller.info_path,
            workers=2,
            extra_env={"PREDICTION_STORE_URL": store_url},
        ) as gateway:
            answers = post_all(f"{gateway.url}/invocations", valuations())
            assert Counter(a.status_code for a in answers) == {200: SINGLES + BATCHES}
            wait_until(lambda: gateway.request_log.exists(), 10, "request log")
            wait_until(
                lambda: len(gateway.request_log.read_text().splitlines()) >= len(answers),
                10,
                "request log lines",
            )
            rows = priced_rows(gateway, answers)
            assert len(rows) == SINGLES + BATCHES * BATCH_ROWS
            wait_until(lambda: stored_rows(store_url) >= len(rows), 15, "prediction store")
            assert stored_rows(store_url) == len(rows)  # every priced row, once

            outcomes, realized = outcomes_for(rows)
            statuses = post_outcomes(f"{gateway.url}/outcomes", outcomes)
            assert statuses == {
                "created": len(realized),
                "corrected": CORRECTIONS,
                "duplicate": DUPLICATES,
                "unknown": UNKNOWN,
            }

            report = tmp_path / "live_accuracy.json"
            monitor_env = {**env, "PREDICTION_STORE_URL": store_url, "MONITOR_MAE_FACTOR": "1.5"}
            run_step("steps.monitor", "accuracy", "--output", str(report), env=monitor_env,
                     cwd=trained_store)  # fmt: skip
            check_figures(json.loads(report.read_text()), rows, realized, version)
            check_gauges_and_alerts(gateway, tmp_path, controller.served(), version)


def check_figures(table: list[dict], rows: list[dict], realized: dict, version: str) -> None:
    """The monitor's MAE (and count, bias) per version and per sector: as computed here."""
    by_key = {(r["request_id"], r["row"]): r for r in rows}
    errors = [(by_key[k]["sector"], by_key[k]["price"] - p) for k, p in realized.items()]
    figures = {(f["model_version"], f["sector"]): f for f in table}
    overall = figures[(version, "all")]
    assert overall["count"] == len(realized)
    assert overall["mae"] == pytest.approx(statistics.fmean(abs(e) for _, e in errors), rel=1e-9)
    assert overall["bias"] == pytest.approx(statistics.fmean(e for _, e in errors), rel=1e-9)
    assert overall["coverage"] == 0.0  # half the price is far below every range
    for sector in {s for s, _ in errors}:
        in_sector = [abs(e) for s, e in errors if s == sector]
        assert figures[(version, sector)]["mae"] == pytest.approx(statistics.fmean(in_sector))
        assert figures[(version, sector)]["count"] == len(in_sector)


def check_gauges_and_alerts(
    gateway: RunningGateway, workdir: Path, served: dict, version: str
) -> None:
    """The figures on the gateway's /metrics, and both live accuracy alerts firing on them."""
    live_mae = gauge(gateway, "model_live_mae_uf", version=version, sector="all")
    test_mae = gauge(gateway, "model_test_mae_uf", version=version)
    assert test_mae == pytest.approx(served["metrics"]["test_mae"])
    assert live_mae is not None and live_mae > 1.5 * test_mae  # the biased prices
    assert gauge(gateway, "model_live_mae_limit_uf", version=version) == pytest.approx(
        1.5 * test_mae
    )
    with running_prometheus(workdir, {"gateway": f"127.0.0.1:{gateway.port}"}) as prometheus:
        for alert in ("LiveMaeAboveTest", "LiveCoverageOffTarget"):
            wait_for(
                prometheus,
                f'ALERTS{{alertname="{alert}",alertstate="firing",version="{version}"}}',
                timeout=30,
            )
        wait_for(prometheus, 'absent(ALERTS{alertname="LiveAccuracyStale"})', timeout=5)
