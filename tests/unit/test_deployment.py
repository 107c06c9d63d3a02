"""The rollout controller's Kubernetes executor (serving/deployment.py) against a stand-in of the
API it calls, which speaks the official client's models and starts from the model server
Deployment of docker/kubernetes/base as `kubectl kustomize` renders it. The new pods' canary
is answered by a local HTTP server."""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pandas as pd
import pytest
from kubernetes import client

from config.settings import Settings
from serving.controller import Processes, executor
from serving.deployment import INFO_KEY, Deployment
from serving.servers import Abandoned, Canary, ServerError, Serving, no_check
from tests.support.gateway import fake_upstream
from tests.support.kubernetes import KUBERNETES, FakeCluster, find, render

NAMESPACE = "property-friends"
PRICES = pd.DataFrame({"price": [11571.4, 9000.25]})
OLD = {"name": "property-friends", "version": "3", "uri": "models:/property-friends/3"}
NEW = {"name": "property-friends", "version": "4", "uri": "models:/property-friends/4"}


CANARY = Canary(b'{"dataframe_split": {}}', PRICES.to_dict(orient="records"))


@pytest.fixture(scope="module")
def base_deployment() -> dict:
    return find(render(KUBERNETES / "base"), "Deployment", "model-server")


@contextmanager
def pods_answering(predictions: pd.DataFrame) -> Iterator[int]:
    """A model server pricing every request with `predictions`; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"predictions": predictions.to_dict(orient="records")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with fake_upstream(Handler) as url:
        yield urlsplit(url).port


def deployment(cluster: FakeCluster, port: int) -> Deployment:
    settings = Settings.from_env(
        {
            "KUBERNETES_NAMESPACE": NAMESPACE,
            "MODEL_PORT": str(port),
            "ROLLOUT_EXECUTOR": "kubernetes",
        }
    )
    return Deployment(settings, apps=cluster, core=cluster, check_seconds=0.01)


def on_version(cluster: FakeCluster, info: dict) -> Serving:
    """The cluster as a controller left it serving `info`."""
    served = Serving(info, ())
    cluster.patch_namespaced_deployment("model-server", NAMESPACE, _patch(info))
    cluster.read_namespaced_deployment("model-server", NAMESPACE)
    cluster.read_namespaced_deployment("model-server", NAMESPACE)
    cluster.config_maps.clear()
    cluster.create_namespaced_config_map(
        NAMESPACE,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="served-model"), data={INFO_KEY: json.dumps(info)}
        ),
    )
    return served


def _patch(info: dict) -> dict:
    container = {"name": "model-server", "env": [{"name": "MODEL_URI", "value": info["uri"]}]}
    labels = {"app.kubernetes.io/version": info["version"]}
    return {
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}
    }


def test_serving_a_version_rolls_the_deployment_then_publishes_it(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    old = on_version(cluster, OLD)
    with pods_answering(PRICES) as port:
        serving = deployment(cluster, port).serve(
            CANARY, {**NEW, "metrics": {"rmse": 1.5}}, old, no_check
        )
    assert cluster.served() == {"uri": NEW["uri"], "version": "4"}
    assert serving.version == "4"
    published = json.loads(cluster.config_maps["served-model"].data[INFO_KEY])
    assert published == {**NEW, "metrics": {"rmse": 1.5}}
    env = base_deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [
        e["name"] for e in cluster.deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    ] == [e["name"] for e in env]  # the other variables kept, in place


def test_the_first_rollout_creates_the_configmap(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    with pods_answering(PRICES) as port:
        deployment(cluster, port).serve(CANARY, NEW, None, no_check)
    assert json.loads(cluster.config_maps["served-model"].data[INFO_KEY])["version"] == "4"


def test_a_stalled_rollout_is_undone_and_not_published(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    old = on_version(cluster, OLD)
    cluster.stall = True
    with pods_answering(PRICES) as port, pytest.raises(ServerError) as error:
        deployment(cluster, port).serve(CANARY, NEW, old, no_check)
    assert str(error.value) == (
        'deployment/model-server did not roll out version 4: ReplicaSet "model-server-7d9" '
        "has timed out progressing. (2 of 2 replicas available)"
    )
    assert cluster.served() == {"uri": OLD["uri"], "version": "3"}
    assert json.loads(cluster.config_maps["served-model"].data[INFO_KEY])["version"] == "3"


def test_a_canary_priced_differently_is_undone(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    old = on_version(cluster, OLD)
    with pods_answering(PRICES + 1.0) as port, pytest.raises(ServerError, match="canary"):
        deployment(cluster, port).serve(CANARY, NEW, old, no_check)
    assert cluster.served() == {"uri": OLD["uri"], "version": "3"}
    assert [p["spec"]["template"]["metadata"]["labels"] for p in cluster.patches[-2:]] == [
        {"app.kubernetes.io/version": "4"},
        {"app.kubernetes.io/version": "3"},
    ]


def test_a_rollout_whose_target_moved_is_undone_and_not_published(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    old = on_version(cluster, OLD)

    def check_target() -> None:  # the alias moves back once the Deployment rolls
        if cluster.served()["version"] == "4":
            raise Abandoned("models:/property-friends@champion resolves to version 3 now")

    with pods_answering(PRICES) as port, pytest.raises(Abandoned):
        deployment(cluster, port).serve(CANARY, NEW, old, check_target)
    assert cluster.served() == {"uri": OLD["uri"], "version": "3"}
    assert json.loads(cluster.config_maps["served-model"].data[INFO_KEY])["version"] == "3"
    assert [p["spec"]["template"]["metadata"]["labels"] for p in cluster.patches[-2:]] == [
        {"app.kubernetes.io/version": "4"},
        {"app.kubernetes.io/version": "3"},
    ]


def test_adopts_what_the_configmap_says_when_the_deployment_runs_it(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    pool = deployment(cluster, 5001)
    assert pool.adopt() is None  # no ConfigMap yet
    on_version(cluster, OLD)
    assert pool.adopt() == Serving(OLD, ())
    cluster.patch_namespaced_deployment("model-server", NAMESPACE, _patch(NEW))  # by hand
    assert pool.adopt() is None


def test_a_deployment_changed_by_hand_is_put_back_on_the_served_version(base_deployment):
    cluster = FakeCluster(base_deployment, NAMESPACE)
    served = on_version(cluster, NEW)
    pool = deployment(cluster, 5001)
    assert pool.heal(served, lambda: CANARY) == served
    assert len(cluster.patches) == 1  # the one that put NEW there
    cluster.patch_namespaced_deployment("model-server", NAMESPACE, _patch(OLD))  # apply -k
    assert pool.heal(served, lambda: CANARY) == served
    assert cluster.served() == {"uri": NEW["uri"], "version": "4"}


def test_the_executor_setting_picks_the_executor(monkeypatch):
    assert isinstance(executor(Settings.from_env({}), "127.0.0.1", ""), Processes)
    monkeypatch.setattr(Deployment, "connect", classmethod(lambda cls, settings: settings))
    chosen = executor(Settings.from_env({"ROLLOUT_EXECUTOR": "kubernetes"}), "127.0.0.1", "")
    assert chosen.rollout_executor == "kubernetes"
