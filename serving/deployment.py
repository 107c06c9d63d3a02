"""The rollout controller's executor on Kubernetes: the pool is the model server Deployment.

Serving a version patches the Deployment's MODEL_URI, waits for every replica, prices the canary
on each new pod, then writes the served-model file into SERVED_MODEL_CONFIGMAP; a rollout that
fails, or whose version MODEL_URI no longer resolves to, is undone (README, "Kubernetes").
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from config.settings import Settings
from serving import servers
from serving.servers import Abandoned, Canary, Server, ServerError, Serving, no_check

logger = logging.getLogger(__name__)

CONTAINER = "model-server"  # the Deployment's container that runs `python -m serving.serve`
VERSION_LABEL = "app.kubernetes.io/version"
INFO_KEY = "served-model.json"
CHECK_SECONDS = 2.0


class Deployment:
    """Rolls the model server Deployment through the AppsV1 API; publishes through CoreV1."""

    def __init__(
        self,
        settings: Settings,
        apps: client.AppsV1Api,
        core: client.CoreV1Api,
        check_seconds: float = CHECK_SECONDS,
    ):
        self.settings, self.apps, self.core = settings, apps, core
        self.name, self.namespace = settings.model_server_deployment, settings.kubernetes_namespace
        self.check_seconds = check_seconds

    @classmethod
    def connect(cls, settings: Settings) -> Deployment:
        """In a pod: its service account; elsewhere: the kubeconfig."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(settings, client.AppsV1Api(), client.CoreV1Api())

    def adopt(self) -> Serving | None:
        """What the ConfigMap says is served, when the Deployment runs it."""
        name = self.settings.served_model_configmap
        try:
            data = self.core.read_namespaced_config_map(name, self.namespace).data
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        info = json.loads((data or {}).get(INFO_KEY) or "{}")
        if not info or info.get("uri") != _model_uri(self._read()):
            return None
        logger.info("adopted deployment/%s on version %s", self.name, info.get("version"))
        return Serving(info, ())

    def serve(
        self,
        checked: Canary,
        info: dict[str, Any],
        old: Serving | None,
        check_target: Callable[[], None],
    ) -> Serving:
        try:
            check_target()
            self._roll(info["uri"], info["version"])
            try:
                self._wait_rolled_out(info["version"], check_target)
                for url in self._pod_urls(info["version"]):
                    servers.check_canary(Server(url, 0), checked)
                check_target()  # the last look before the gateway sees it
            except (ServerError, Abandoned):
                if old is not None:
                    self._roll(old.info["uri"], old.version)
                raise
            self._publish(info)
        except ApiException as error:
            raise ServerError(f"Kubernetes API: {error.status} {error.reason}") from None
        logger.info("version %s takes traffic on deployment/%s", info["version"], self.name)
        return Serving(info, ())

    def heal(self, serving: Serving, canary_of: Callable[[], Canary]) -> Serving:
        """The Deployment replaces dead pods; one changed under the controller (an overlay
        applied again resets its pinned version) is rolled back to the served version."""
        running = _model_uri(self._read())
        if running != serving.info["uri"]:
            logger.warning("deployment/%s runs %s, not the served version", self.name, running)
            self._roll(serving.info["uri"], serving.version)
        return serving

    def adopt_shadow(self) -> Serving | None:
        return None

    def serve_shadow(
        self, checked: Canary, info: dict[str, Any], check_target: Callable[[], None]
    ) -> Serving:
        """Not on Kubernetes yet: the challenger would need a Deployment of its own."""
        raise ServerError(
            "the kubernetes executor serves no challenger in shadow (it needs a model server "
            "Deployment of its own); set CHALLENGER_URI=none or use the process executor"
        )

    def stop_shadow(self, shadow: Serving) -> None:
        """Nothing runs in shadow here."""

    def heal_shadow(self, shadow: Serving, canary_of: Callable[[], Canary]) -> Serving:
        return shadow

    def _read(self) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(self.name, self.namespace)

    def _roll(self, uri: str, version: str) -> None:
        env = [{"name": "MODEL_URI", "value": uri}]
        template = {
            "metadata": {"labels": {VERSION_LABEL: str(version)}},
            "spec": {"containers": [{"name": CONTAINER, "env": env}]},
        }
        patch = {"spec": {"template": template}}
        self.apps.patch_namespaced_deployment(self.name, self.namespace, patch)
        logger.info("deployment/%s rolling to %s", self.name, uri)

    def _wait_rolled_out(self, version: str, check_target: Callable[[], None] = no_check) -> None:
        """Until every replica is updated and available; ServerError when the Deployment
        reports its progress deadline exceeded or the time runs out, Abandoned when
        `check_target` raises it."""
        deadline = None
        while True:
            check_target()
            deployment = self._read()
            wanted = deployment.spec.replicas or 1
            status = deployment.status
            observed = (status.observed_generation or 0) >= (deployment.metadata.generation or 0)
            updated = status.updated_replicas == status.replicas == wanted
            if observed and updated and status.available_replicas == wanted:
                return
            stalled = [
                c.message
                for c in status.conditions or ()
                if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded"
            ]
            timeout = self.settings.model_start_timeout_seconds * wanted
            deadline = deadline or time.monotonic() + timeout
            if stalled or time.monotonic() > deadline:
                raise ServerError(
                    f"deployment/{self.name} did not roll out version {version}: "
                    f"{stalled[0] if stalled else 'timed out'} "
                    f"({status.available_replicas or 0} of {wanted} replicas available)"
                )
            time.sleep(self.check_seconds)

    def _pod_urls(self, version: str) -> list[str]:
        labels = {**self._read().spec.selector.match_labels, VERSION_LABEL: str(version)}
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        urls = [
            f"http://{pod.status.pod_ip}:{self.settings.model_port}"
            for pod in pods
            if pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None
        ]
        if not urls:
            raise ServerError(f"no running pod of version {version} to price the canary")
        return urls

    def _publish(self, info: dict[str, Any]) -> None:
        """Write the served-model file into the ConfigMap (created at the first rollout)."""
        name, data = self.settings.served_model_configmap, {INFO_KEY: json.dumps(info)}
        try:
            self.core.patch_namespaced_config_map(name, self.namespace, {"data": data})
        except ApiException as error:
            if error.status != 404:
                raise
            config_map = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data=data)
            self.core.create_namespaced_config_map(self.namespace, config_map)


def _model_uri(deployment: client.V1Deployment) -> str | None:
    """The MODEL_URI the Deployment's model server container runs."""
    for container in deployment.spec.template.spec.containers:
        if container.name == CONTAINER:
            return next((e.value for e in container.env or () if e.name == "MODEL_URI"), None)
    return None
