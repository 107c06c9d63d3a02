"""A challenger in shadow under load: the real rollout controller serving the champion on a pool
of two real model servers and the challenger on one of its own, the real gateway (gunicorn, two
workers) copying every priced request to it, 16 clients sending all along.

No client request fails or is answered by the challenger; every copy the challenger priced is
in the prediction store and the request log under both versions, with the same request id and
rows; the copies sent, dropped and failed add up to the requests priced; the monitor compares
the two on those rows; a restarted controller adopts the challenger's server apart from the
pool's; the challenger alias removed, its server stops and the copies stop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.shadow import SHADOW_PATH
from serving.servers import alive
from tests.support.gateway import (
    LoadClients,
    RunningGateway,
    metric_samples,
    metric_sum,
    read_log,
    running_gateway,
)
from tests.support.processes import free_port, wait_until
from tests.support.rollout import (
    MODEL,
    ONE_LISTING,
    Controller,
    mlflow_client,
    running_controller,
    train_version,
)
from tests.support.stack import SMALL_SOURCE, run_step, store_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS = 16
LOAD_SECONDS = 12


@dataclass(frozen=True)
class Shadowing:
    workdir: Path
    env: dict[str, str]
    controller: Controller
    gateway: RunningGateway
    challenger: str


def shadow_entry(controller: Controller) -> dict:
    return controller.served().get("shadow") or {}


@pytest.fixture(scope="module")
def shadowing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shadowing]:
    """Version 1 the champion on two servers, version 2 the challenger in shadow on one."""
    workdir = tmp_path_factory.mktemp("shadow")
    env = store_env(workdir, MODEL_SERVERS="2", ROLLOUT_POLL_SECONDS="1")
    run_step("steps.main", "--source", SMALL_SOURCE, "--preset", "notebook", env=env, cwd=workdir)
    client = mlflow_client(env)
    ingest_run = client.get_run(client.get_model_version(MODEL, "1").run_id).data.tags[
        "ingest_run_id"
    ]
    challenger = train_version(env, workdir, ingest_run)
    run_step("steps.challenge", "--model-version", challenger, env=env, cwd=workdir)
    with running_controller(workdir / "controller", env) as controller:
        controller.wait_served("1")
        wait_until(
            lambda: shadow_entry(controller).get("version") == challenger,
            240,
            "the challenger in shadow",
            interval=0.5,
        )
        dead = f"http://127.0.0.1:{free_port()}"
        with running_gateway(
            workdir / "gateway", dead, info_path=controller.info_path, workers=2
        ) as gateway:
            yield Shadowing(workdir, env, controller, gateway, challenger)


def stored(gateway: RunningGateway, table: str) -> dict[tuple[str, int], str]:
    """(request id, row) -> model version of a table of the gateway's prediction store."""
    with sqlite3.connect(gateway.state_dir / "predictions.db") as db:
        rows = db.execute(f"SELECT request_id, row_index, model_version FROM {table}").fetchall()
    return {(r, i): v for r, i, v in rows}


def copies(gateway: RunningGateway) -> dict[str, float]:
    samples = metric_samples(gateway)
    return {
        result: metric_sum(samples, "gateway_shadow_requests_total", result=result)
        for result in ("sent", "dropped", "failed")
    }


def test_under_16_clients_no_request_fails_and_every_copy_is_stored_under_both_versions(
    shadowing: Shadowing,
) -> None:
    gateway, challenger = shadowing.gateway, shadowing.challenger
    load = LoadClients(gateway.url, [ONE_LISTING], clients=CLIENTS, prefix="shadow").start()
    try:
        time.sleep(LOAD_SECONDS)
    finally:
        sent = load.stop()
    mine = {s.request_id for s in sent}

    failures = Counter((s.status, s.error_code) for s in sent if s.status != 200)
    assert len(sent) > 300 and not failures, f"{len(sent)} requests, failures: {failures}"
    assert {s.model_version for s in sent} == {"1"}  # never the challenger's answer
    wait_until(lambda: sum(copies(gateway).values()) >= len(sent), 120, "every copy accounted")
    counted = copies(gateway)
    assert counted["failed"] == 0 and counted["sent"] > 0
    assert counted["sent"] + counted["dropped"] == len(sent)  # SHADOW_SHARE=1: each one copied

    def stored_all() -> bool:
        shadow = {k for k in stored(gateway, "shadow_predictions") if k[0] in mine}
        return len(shadow) == counted["sent"]

    wait_until(stored_all, 60, "the challenger's rows in the store", interval=0.5)
    champion = {k: v for k, v in stored(gateway, "predictions").items() if k[0] in mine}
    shadow = {k: v for k, v in stored(gateway, "shadow_predictions").items() if k[0] in mine}
    assert len(champion) == len(sent) and set(champion.values()) == {"1"}
    assert set(shadow) <= set(champion) and set(shadow.values()) == {challenger}
    lines = [
        line
        for line in read_log(gateway.request_log)
        if line["path"] == SHADOW_PATH and line["request_id"] in mine
    ]
    assert sorted(line["request_id"] for line in lines) == sorted(r for r, _ in shadow)
    assert {(line["model_version"], line["champion_version"]) for line in lines} == {
        (challenger, "1")
    }
    assert all(len(line["predictions"]) == len(line["champion_predictions"]) == 1 for line in lines)

    monitored = run_step(
        "steps.monitor",
        "accuracy",
        "--output",
        str(shadowing.workdir / "live.json"),
        "--shadow-output",
        str(shadowing.workdir / "shadow.json"),
        env={
            **shadowing.env,
            "PREDICTION_STORE_URL": f"sqlite:///{gateway.state_dir / 'predictions.db'}",
        },
        cwd=shadowing.workdir,
    )
    (compared,) = json.loads((shadowing.workdir / "shadow.json").read_text())
    assert (compared["challenger_version"], compared["champion_versions"]) == (challenger, "1")
    assert compared["requests"] >= counted["sent"]
    assert f"challenger version {challenger} vs champion 1: " in monitored.stdout


def test_a_restarted_controller_adopts_the_challenger_apart_and_stops_it_when_its_alias_goes(
    shadowing: Shadowing,
) -> None:
    controller, gateway = shadowing.controller, shadowing.gateway
    pool, shadow = controller.served()["pids"], shadow_entry(controller)["pids"]
    controller.kill()
    controller.start()
    wait_until(
        lambda: f"adopted 1 shadow server(s) of version {shadowing.challenger}" in controller.log(),
        30,
        "the challenger adopted",
    )
    time.sleep(3)  # a few polls: nothing restarted
    assert controller.log().count("adopted 2 model server(s) of version 1") == 1
    assert (controller.served()["pids"], shadow_entry(controller)["pids"]) == (pool, shadow)

    run_step("steps.challenge", "--remove", "true", env=shadowing.env, cwd=shadowing.workdir)
    wait_until(lambda: not shadow_entry(controller), 30, "the shadow entry removed")
    (pid,) = shadow.values()
    wait_until(lambda: not alive(pid), 30, "the challenger's server stopped")
    assert controller.served()["pids"] == pool and all(alive(p) for p in pool.values())
    before = copies(gateway)
    time.sleep(2)  # every worker has read the file
    load = LoadClients(gateway.url, [ONE_LISTING], clients=4, prefix="after", max_requests=50)
    load.start()
    wait_until(lambda: len(load.sent) >= 50, 30, "50 requests")
    assert {s.status for s in load.stop()} == {200}
    assert copies(gateway) == before
