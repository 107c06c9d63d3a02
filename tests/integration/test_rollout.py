"""Live rollout under load: the real controller, a pool of two real MLflow scoring server
processes and the real gateway, with 16 clients sending all along.

A promotion made the way a user makes it (the alias moved with MlflowClient as the MLflow UI
does, the stage changed, `rollback`) reaches every answer within a bounded time and costs no
request; one undone two seconds later never reaches traffic; a version failing promote's gate
is refused and the old one keeps serving; a killed server costs no request and is replaced; a
restarted controller adopts the running servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from config.settings import MODEL_INFO_CHECK_SECONDS
from tests.support.gateway import LoadClients, RunningGateway, Sent, running_gateway
from tests.support.processes import free_port, wait_until
from tests.support.rollout import (
    MODEL,
    ONE_LISTING,
    Controller,
    ingest,
    logged_once,
    mlflow_client,
    running_controller,
    train_version,
)
from tests.support.stack import SMALL_SOURCE, run_step, store_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

READ_TIMEOUT = 4.0
DRAIN_SECONDS = MODEL_INFO_CHECK_SECONDS + 1 + READ_TIMEOUT + 2  # the controller's wait, + 2 s
# every worker switches at the file's switch_at: an old answer to a request sent later than the
# first new one only when that request was queued less than the first one (2 cores, 16 clients)
SWITCH_SECONDS = 0.25
CLIENTS = 16


@dataclass(frozen=True)
class Store:
    """A tracking store holding version 1 (champion, Production), version 2 (evaluated, as
    good) and version 3 (trained on 120 rows, never evaluated: worse than the others)."""

    workdir: Path
    env: dict[str, str]
    good: str
    bad: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    workdir = tmp_path_factory.mktemp("rollout-store")
    env = store_env(
        workdir,
        MODEL_SERVERS="2",
        ROLLOUT_POLL_SECONDS="1",
        GATEWAY_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
    )
    run_step("steps.main", "--source", SMALL_SOURCE, "--preset", "notebook", env=env, cwd=workdir)
    client = mlflow_client(env)
    ingest_run = client.get_run(client.get_model_version(MODEL, "1").run_id).data.tags[
        "ingest_run_id"
    ]
    good = train_version(env, workdir, ingest_run)
    run_step("steps.evaluate", "--model-version", good, env=env, cwd=workdir)
    bad = train_version(
        env, workdir, ingest(env, workdir, "synthetic:train_rows=120,test_rows=600")
    )
    return Store(workdir, env, good, bad)


@dataclass(frozen=True)
class Stack:
    controller: Controller
    gateway: RunningGateway


@contextlib.contextmanager
def stack(store: Store, name: str, **env: str) -> Iterator[Stack]:
    """A controller on the store and a gateway following its served-model file."""
    workdir = store.workdir / name
    with running_controller(workdir, {**store.env, **env}) as controller:
        dead = f"http://127.0.0.1:{free_port()}"  # the file's servers replace it
        with running_gateway(
            workdir / "gateway",
            dead,
            info_path=controller.info_path,
            workers=2,
            extra_env={"GATEWAY_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT)},
        ) as gateway:
            yield Stack(controller, gateway)


@pytest.fixture(scope="module")
def alias_stack(store: Store) -> Iterator[Stack]:
    """MODEL_URI=models:/property-friends@champion (the default)."""
    with stack(store, "alias") as running:
        yield running


def set_alias(store: Store, alias: str, version: str) -> None:
    """What the MLflow UI does when an alias is moved by hand."""
    mlflow_client(store.env).set_registered_model_alias(MODEL, alias, version)


def set_stage(store: Store, version: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mlflow_client(store.env).transition_model_version_stage(
            MODEL, version, "Production", archive_existing_versions=True
        )


def serving(running: Stack, store: Store, version: str) -> None:
    """Precondition of a test: champion -> `version`, served by the pool."""
    set_alias(store, "champion", version)
    running.controller.wait_served(version)


def under_load(
    running: Stack, prefix: str, action: Callable[[], None], settled: Callable[[], None]
) -> list[Sent]:
    """16 clients send all along: 2 s before `action`, until `settled` returns, and long
    enough after it for the old servers to be stopped under load."""
    load = LoadClients(
        running.gateway.url, [ONE_LISTING], clients=CLIENTS, prefix=prefix, pause=0.02
    ).start()
    try:
        time.sleep(2)
        action()
        settled()
        time.sleep(DRAIN_SECONDS)
    finally:
        sent = load.stop()
    return sent


def assert_no_failure_and_logged_once(sent: list[Sent], running: Stack) -> None:
    failures = Counter((s.status, s.error_code) for s in sent if s.status != 200)
    assert len(sent) > 200 and not failures, f"{len(sent)} requests, failures: {failures}"
    lines = logged_once(running.gateway.request_log, sent)
    mine = [line for line in lines if line["request_id"] in {s.request_id for s in sent}]
    assert Counter(line["request_id"] for line in mine) == Counter(s.request_id for s in sent)
    assert {line["request_id"]: line["model_version"] for line in mine} == {
        s.request_id: s.model_version for s in sent
    }


def assert_switched(sent: list[Sent], old: str, new: str) -> None:
    """Answers carry the old version, then the new one only: the workers switch together."""
    assert {s.model_version for s in sent} == {old, new}
    first_new = min(s.started for s in sent if s.model_version == new)
    late = [s for s in sent if s.started > first_new + SWITCH_SECONDS]
    assert len(late) > 100 and {s.model_version for s in late} == {new}
    assert all(s.model_version == old for s in sent if s.ended < first_new)


def test_moving_the_alias_as_the_ui_does_reaches_every_answer_without_a_failure(
    store: Store, alias_stack: Stack
) -> None:
    serving(alias_stack, store, "1")
    started = time.monotonic()
    sent = under_load(
        alias_stack,
        "alias",
        lambda: set_alias(store, "champion", store.good),
        lambda: alias_stack.controller.wait_served(store.good, timeout=240),
    )
    assert time.monotonic() - started < 240 + DRAIN_SECONDS + 5
    assert_switched(sent, "1", store.good)
    assert_no_failure_and_logged_once(sent, alias_stack)
    response = requests.get(
        f"{alias_stack.gateway.url}/model", headers=dict(ONE_LISTING.headers), timeout=5
    )
    assert response.json()["version"] == store.good


def test_rollback_reaches_every_answer_without_a_failure(store: Store, alias_stack: Stack) -> None:
    serving(alias_stack, store, store.good)
    set_alias(store, "previous-champion", "1")
    sent = under_load(
        alias_stack,
        "rollback",
        lambda: run_step("steps.rollback", env=store.env, cwd=store.workdir),
        lambda: alias_stack.controller.wait_served("1"),
    )
    assert_switched(sent, store.good, "1")
    assert_no_failure_and_logged_once(sent, alias_stack)


def test_a_hand_moved_alias_to_a_failing_version_is_refused_and_the_old_one_serves(
    store: Store, alias_stack: Stack
) -> None:
    serving(alias_stack, store, "1")
    controller = alias_stack.controller
    refused_before = controller.rollouts("refused")
    try:
        sent = under_load(
            alias_stack,
            "refused",
            lambda: set_alias(store, "champion", store.bad),
            lambda: wait_until(
                lambda: controller.rollouts("refused") > refused_before, 300, "the refusal"
            ),
        )
        info = controller.served()
    finally:
        set_alias(store, "champion", "1")
    assert controller.rollouts("refused") == refused_before + 1
    assert {s.model_version for s in sent} == {"1"}
    assert_no_failure_and_logged_once(sent, alias_stack)
    assert info["version"] == "1"
    tags = mlflow_client(store.env).get_model_version(MODEL, store.bad).tags
    assert (tags["verdict"], tags["champion_version"]) == ("worse", "1")
    assert f"version {store.bad} refused: verdict 'worse'" in controller.log()


def test_a_promotion_undone_two_seconds_later_never_takes_traffic(
    store: Store, alias_stack: Stack
) -> None:
    serving(alias_stack, store, "1")
    controller = alias_stack.controller
    seen = f"resolves to version {store.good} (serving 1): checking it"
    published = f"version {store.good} takes traffic"  # counted once drained: read the log
    abandoned = controller.rollouts("abandoned")
    published_before = controller.log().count(published)

    def promote_then_undo() -> None:
        checking = controller.log().count(seen)
        set_alias(store, "champion", store.good)
        moved = time.monotonic()
        # undone once the controller works on it (two seconds after the move, unless a slow
        # poll saw it later): else the undo would come before the rollout, testing nothing
        wait_until(lambda: controller.log().count(seen) > checking, 10, "the controller sees it")
        time.sleep(max(0.0, moved + 2 - time.monotonic()))
        set_alias(store, "champion", "1")

    sent = under_load(
        alias_stack,
        "undone",
        promote_then_undo,
        lambda: wait_until(
            lambda: controller.rollouts("abandoned") > abandoned, 240, "the abandonment"
        ),
    )

    assert {s.model_version for s in sent} == {"1"}
    assert_no_failure_and_logged_once(sent, alias_stack)
    assert controller.rollouts("abandoned") == abandoned + 1
    assert controller.log().count(published) == published_before
    assert controller.served()["version"] == "1"
    assert (
        f"version {store.good} abandoned: models:/{MODEL}@champion resolves to version 1 now; "
        "version 1 keeps serving"
    ) in controller.log()


def test_killing_a_server_under_load_costs_no_request_and_it_is_replaced(
    store: Store, alias_stack: Stack
) -> None:
    serving(alias_stack, store, "1")
    controller = alias_stack.controller
    victim_url, victim_pid = next(iter(controller.served()["pids"].items()))

    def replaced() -> None:
        wait_until(
            lambda: (
                victim_url not in controller.served()["pids"]
                and len(controller.served()["pids"]) == 2
            ),
            240,
            "a replacement",
        )
        controller.wait_served("1")

    sent = under_load(alias_stack, "kill", lambda: os.killpg(victim_pid, signal.SIGKILL), replaced)
    assert_no_failure_and_logged_once(sent, alias_stack)
    assert {s.model_version for s in sent} == {"1"}
    assert victim_pid not in controller.served()["pids"].values()


def test_a_restarted_controller_adopts_the_running_servers(
    store: Store, alias_stack: Stack
) -> None:
    serving(alias_stack, store, "1")
    controller = alias_stack.controller
    pids = controller.served()["pids"]
    controller.kill()
    answer = requests.post(
        f"{alias_stack.gateway.url}/invocations",
        data=ONE_LISTING.body,
        headers={"Content-Type": "application/json", **ONE_LISTING.headers},
        timeout=10,
    )
    assert (answer.status_code, answer.headers["X-Model-Version"]) == (200, "1")
    controller.start()
    wait_until(
        lambda: controller.log().count("adopted 2 model server(s) of version 1") >= 1,
        30,
        "adoption",
    )
    time.sleep(3)  # a few polls: nothing restarted
    assert controller.served()["pids"] == pids
    assert controller.rollouts("served") == 0


def test_a_stage_change_reaches_every_answer_without_a_failure(store: Store) -> None:
    set_stage(store, "1")
    with stack(store, "stage", MODEL_URI=f"models:/{MODEL}/Production") as running:
        running.controller.wait_served("1")
        sent = under_load(
            running,
            "stage",
            lambda: set_stage(store, store.good),
            lambda: running.controller.wait_served(store.good),
        )
    assert_switched(sent, "1", store.good)
    assert_no_failure_and_logged_once(sent, running)
