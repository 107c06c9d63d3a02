"""What users rely on, checked through the containers of both images, run as compose declares
them: priced answers behind a key, a key added to the mounted keys file taken without a restart,
a tracking server refusing whoever has no login or no grant, healthy by their own HEALTHCHECK,
no root, read-only roots, a release rolled out under load, a crash survived with the same
champion."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import requests

from pyfunc.schema import example_listing
from serving.servers import SCORING_APP
from tests.images.conftest import PASSWORDS, Stack
from tests.support.docker import (
    HostNetwork,
    Pod,
    attempt,
    docker,
    health,
    main_pid,
    process_uids,
    wait_healthy,
)
from tests.support.gateway import ALICE_KEY, LoadClients, sha256_hex, write_keys_file
from tests.support.kubernetes import KUBERNETES, find, render
from tests.support.processes import free_port, http_ok, wait_until
from tests.support.rollout import ONE_LISTING

pytestmark = pytest.mark.images

APP_USER = "10001"  # docker/Dockerfile's USER
LONG_RUNNING = ("mlflow", "controller", "gateway")
SERVED = "property-friends"  # MODEL_NAME; the trainer's candidates are another model
KEYS_TAKEN_SECONDS = 10  # the gateway looks at its keys file every second


def served_version(stack: Stack) -> str | None:
    priced = stack.priced()
    return priced.headers.get("X-Model-Version") if priced is not None else None


def test_the_gateway_prices_with_a_key_and_refuses_without(stack: Stack) -> None:
    priced = stack.price({"X-API-Key": ALICE_KEY})
    assert priced.status_code == 200, priced.text
    assert priced.headers["X-Model-Version"] == "1"
    [prediction] = priced.json()["predictions"]
    assert prediction["price"] > 0
    refused = stack.price({})
    assert refused.status_code == 401
    assert refused.json()["error_code"] == "MISSING_API_KEY"


def test_a_key_added_to_the_mounted_keys_file_is_taken_without_a_restart(stack: Stack) -> None:
    name = stack.roles["gateway"].name
    started = docker("inspect", "-f", "{{.State.StartedAt}}", name)
    key = "carol-" + PASSWORDS["viewer"]
    assert stack.price({"X-API-Key": key}).status_code == 403
    write_keys_file(stack.keys_folder / "keys.jsonl", {"id": "carol", "sha256": sha256_hex(key)})
    wait_until(
        lambda: stack.price({"X-API-Key": key}).status_code == 200,
        KEYS_TAKEN_SECONDS,
        "the new key accepted",
        interval=0.5,
    )
    assert all(stack.price({"X-API-Key": key}).status_code == 200 for _ in range(6))  # each worker
    assert docker("inspect", "-f", "{{.State.StartedAt}}", name) == started


def test_the_tracking_server_refuses_a_request_without_a_login(stack: Stack) -> None:
    path, query = "registered-models/get", {"params": {"name": SERVED}}
    anonymous = stack.registry("GET", path, None, **query)
    assert anonymous.status_code == 401, anonymous.text
    wrong = requests.get(
        f"{stack.tracking_url}/api/2.0/mlflow/{path}",
        auth=("viewer", "not-" + PASSWORDS["viewer"]),
        timeout=30,
        **query,
    )
    assert wrong.status_code == 401
    viewer = stack.registry("GET", path, "viewer", **query)
    assert viewer.status_code == 200, viewer.text
    assert viewer.json()["registered_model"]["aliases"] == [{"alias": "champion", "version": "1"}]


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_each_container_is_healthy_by_the_image_s_own_healthcheck(
    stack: Stack, service: str
) -> None:
    name = stack.roles[service].name
    probe = json.loads(docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", name))
    image = stack.roles[service].image
    assert probe == json.loads(
        docker("image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", image)
    )
    assert health(name) == "healthy"


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_no_process_of_a_container_runs_as_root(stack: Stack, service: str) -> None:
    uids = process_uids(stack.roles[service].name)
    assert uids, "no process listed"
    assert set(uids.values()) == {APP_USER}, uids


def test_the_controller_runs_its_pool_in_its_own_container(stack: Stack) -> None:
    commands = process_uids(stack.roles["controller"].name)
    scorers = [c for c in commands if SCORING_APP in c]
    assert len(scorers) == int(stack.roles["controller"].environment["MODEL_SERVERS"]), commands
    assert not [c for c in commands if "models serve" in c], commands


def model_copies(stack: Stack) -> list[str]:
    """The folders holding a model (its MLmodel file) anywhere in the controller's container."""
    search = ("find", "/", "-path", "/proc", "-prune", "-o", "-name", "MLmodel", "-print")
    _, found = attempt("exec", stack.roles["controller"].name, *search)  # some folders unreadable
    paths = [line for line in found.splitlines() if line.endswith("/MLmodel")]
    return sorted(path.rsplit("/", 2)[-2] for path in paths)


def test_the_controller_keeps_one_copy_of_the_served_model(stack: Stack) -> None:
    assert model_copies(stack) == ["property-friends-1"]


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_the_root_filesystem_is_read_only_as_compose_says(stack: Stack, service: str) -> None:
    role = stack.roles[service]
    assert role.spec["read_only"] is True
    probe = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x')"
    code, blocked = attempt("exec", role.name, "python", "-c", probe, "/app/probe")
    assert code != 0
    assert "Read-only file system" in blocked
    for writable in [
        "/tmp",
        *(v["target"] for v in role.spec.get("volumes", ()) if not v.get("read_only")),
    ]:
        docker("exec", role.name, "python", "-c", probe, f"{writable}/probe")
        docker("exec", role.name, "rm", f"{writable}/probe")


def test_kubernetes_runs_the_model_server_and_the_gateway_from_the_same_images(
    stack: Stack,
) -> None:
    """The base manifests' containers, run as their pod specs say: the model server pod on
    version 1 of the registry, the gateway pod in front of it as its service."""
    manifests = render(KUBERNETES / "base")
    ports = {5000: stack.network.ports[5000], 5001: free_port(), 8000: free_port()}
    network = HostNetwork(ports, frozenset({"mlflow", "model-server"}))
    pods = [
        Pod(
            find(manifests, "Deployment", name),
            image,
            network,
            f"{stack.prefix}-k8s-{name}",
            values,
            folders,
        )
        for name, image, values, folders in (
            (
                "model-server",
                stack.roles["mlflow"].image,
                {"MLFLOW_TRACKING_PASSWORD": PASSWORDS["controller"]},  # secret/mlflow-users
                {},
            ),
            (
                "gateway",
                stack.roles["gateway"].image,
                {  # secret/property-friends: as compose's gateway has them
                    name: stack.roles["gateway"].environment[name]
                    for name in ("GATEWAY_API_KEYS", "PREDICTION_STORE_URL")
                },
                {"keys": stack.keys_folder},  # secret/gateway-keys
            ),
        )
    ]
    for pod in pods:  # the model server first: the gateway is ready once a server answers
        stack.started.append(pod.name)
        docker(*pod.run_args())
        ready = pod.url("http", pod.container["readinessProbe"]["httpGet"]["path"])
        wait_until(lambda url=ready: http_ok(url), 300, f"{pod.name} ready", interval=1)
        assert http_ok(pod.url("http", pod.container["livenessProbe"]["httpGet"]["path"]))
    model_server, gateway = pods
    body = {"dataframe_records": [example_listing()]}
    through = requests.post(
        gateway.url("http", "/invocations"), json=body, headers={"X-API-Key": ALICE_KEY}, timeout=30
    )
    assert through.status_code == 200, through.text
    assert through.json() == stack.price({"X-API-Key": ALICE_KEY}).json()  # version 1 alike
    assert set(process_uids(model_server.name).values()) == {APP_USER}


def move_champion(stack: Stack, user: str, version: str) -> requests.Response:
    body = {"name": SERVED, "alias": "champion", "version": version}
    return stack.registry("POST", "registered-models/alias", user, json=body)


def test_a_release_rolls_out_under_load_with_no_failed_request(stack: Stack) -> None:
    """The trainer runs again (candidate 2), which neither it nor the controller may make
    champion (403); then, while clients price, the releaser's release copies it into version 2,
    which is rolled out."""
    stack.run_once("trainer")
    candidates = stack.roles["trainer"].environment["CANDIDATE_MODEL_NAME"]
    candidate = {"name": SERVED, "source": f"models:/{candidates}/2"}
    for refused in (
        move_champion(stack, "trainer", "1"),
        move_champion(stack, "controller", "1"),
        stack.registry("POST", "model-versions/create", "trainer", json=candidate),
    ):
        assert (refused.status_code, refused.text) == (403, "Permission denied")
    assert served_version(stack) == "1"
    load = LoadClients(stack.gateway_url, [ONE_LISTING], clients=4, prefix="promotion", pause=0.02)
    load.start()
    try:
        stack.run_once("release")
        wait_until(lambda: served_version(stack) == "2", 300, "version 2 served", interval=1)
        drained = float(stack.roles["controller"].environment["GATEWAY_READ_TIMEOUT_SECONDS"]) + 4
        time.sleep(drained)  # the old servers stop while the load goes on
    finally:
        sent = load.stop()
    failed = [s for s in sent if s.status != 200]
    assert not failed, f"{len(failed)} of {len(sent)} failed, e.g. {failed[:3]}"
    versions = [s.model_version for s in sorted(sent, key=lambda s: s.started)]
    assert set(versions) == {"1", "2"}
    assert versions[-50:] == ["2"] * 50
    assert model_copies(stack) == ["property-friends-2"]


@pytest.mark.parametrize("service", ["controller", "gateway"])
def test_a_killed_container_restarts_and_serves_the_same_champion(
    stack: Stack, service: str
) -> None:
    before = served_version(stack)
    assert before == "2"
    name = stack.roles[service].name
    restarts = int(docker("inspect", "-f", "{{.RestartCount}}", name))
    os.kill(main_pid(name), signal.SIGKILL)  # a crash: compose's restart policy brings it back
    wait_until(
        lambda: int(docker("inspect", "-f", "{{.RestartCount}}", name)) > restarts,
        60,
        f"{name} restarted",
    )
    wait_healthy(name, 300)
    # the restarted pool is in rotation once every gateway worker prices with it
    wait_until(stack.prices_steadily, 300, "priced answers", interval=1)
    assert served_version(stack) == before
