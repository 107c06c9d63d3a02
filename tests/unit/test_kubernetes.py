"""The Kubernetes manifests, checked offline: every overlay of docker/kubernetes renders with
`kubectl kustomize`, validates against the Kubernetes API schemas (kubernetes-validate,
strict), passes checkov with every skipped check justified in the manifests, and keeps the
project's contracts: settings' variables, probes, security context, who reaches the model
servers, the controller's permissions and the alerting rules compose loads."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from config.settings import Settings
from tests.support.docker import DOCKERFILE, compose_config, example_variables
from tests.support.kubernetes import KUBERNETES, OVERLAYS, ROOT, find, render

KUBERNETES_VERSION = "1.31.0"  # the oldest minor still supported upstream when written
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator CRDs
RULES_FILE = ROOT / "docker" / "prometheus" / "alerts.yml"
PROMETHEUS_FILE = ROOT / "docker" / "prometheus" / "prometheus.yml"  # compose's
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
IMAGES = {"gateway": "property-friends-gateway"}  # the others run the model image
# What a project container may set besides the settings: the tracking server's own variables
# and HOME (on the writable /tmp: the root filesystem is read-only).
OTHER_VARIABLES = {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_SERVER_ALLOWED_HOSTS", "HOME"}
# The roles compose runs (and the image suite runs from it) that Kubernetes runs too, and the
# options each sets its own way: compose's pool is reached as `controller` (Kubernetes: through
# service/model-server); compose's artifacts have a volume of their own (Kubernetes base: a
# folder beside the sqlite store on the volume).
SHARED_ROLES = ("gateway", "controller", "mlflow")
OWN_OPTIONS = {"--public-host", "--artifacts-destination"}
PROBES = {
    "gateway": {"readinessProbe": "/ready", "livenessProbe": "/health"},
    "model-server": {"readinessProbe": "/ping", "livenessProbe": "/ping", "startupProbe": "/ping"},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request) -> list[dict[str, Any]]:
    return render(KUBERNETES / "overlays" / request.param)


def containers(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        c["name"]: c
        for m in manifests
        if m["kind"] == "Deployment"
        for c in m["spec"]["template"]["spec"]["containers"]
    }


def test_every_manifest_validates_against_the_kubernetes_schemas(manifests):
    kinds = {m["kind"] for m in manifests}
    for manifest in manifests:
        if manifest["kind"] not in OPERATOR_KINDS:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"NetworkPolicy", "Role", "RoleBinding"} | OPERATOR_KINDS <= kinds


def test_a_misspelt_field_fails_validation(manifests):
    gateway = copy.deepcopy(find(manifests, "Deployment", "gateway"))
    gateway["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


def test_checkov_fails_no_check_and_every_skip_gives_its_reason(manifests, tmp_path):
    if not CHECKOV.exists():
        pytest.fail(f"checkov is missing; install it with: make checkov (into {CHECKOV.parent})")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(manifests))
    result = subprocess.run(
        [
            str(CHECKOV),
            "--file",
            str(rendered),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)["results"]
    assert [(c["check_id"], c["resource"]) for c in report["failed_checks"]] == []
    assert len(report["passed_checks"]) > 300
    skipped = report["skipped_checks"]
    assert skipped and all(len(c["check_result"]["suppress_comment"]) > 30 for c in skipped)


def test_containers_set_only_settings_the_project_declares(manifests):
    declared = {name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    for name, container in containers(manifests).items():
        image = IMAGES.get(name, "property-friends")
        assert container["image"].rsplit("/", 1)[-1].split(":")[0] == image, name
        assert {e["name"] for e in container["env"]} <= declared, name


def test_pods_run_as_non_root_on_a_read_only_root_with_bounded_resources(manifests):
    for manifest in (m for m in manifests if m["kind"] == "Deployment"):
        pod = manifest["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert set(container["resources"]) == {"requests", "limits"}


def test_probes_ask_the_health_endpoints_of_each_service(manifests):
    by_name = containers(manifests)
    for name, probes in PROBES.items():
        for probe, path in probes.items():
            assert by_name[name][probe]["httpGet"]["path"] == path, (name, probe)


def test_only_the_gateway_and_the_controller_reach_the_model_servers(manifests):
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    deny_all = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert deny_all and "ingress" not in deny_all[0]["spec"]
    model = find(manifests, "NetworkPolicy", "model-server")
    assert model["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "model-server"}
    (rule,) = model["spec"]["ingress"]
    assert [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    ] == [
        "gateway",
        "controller",
    ]


def test_the_controller_may_do_what_its_executor_calls_and_no_more(manifests):
    role = find(manifests, "Role", "controller")
    granted = {
        (resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("deployments", "get", ("model-server",)),
        ("deployments", "patch", ("model-server",)),
        ("configmaps", "get", ("served-model",)),
        ("configmaps", "patch", ("served-model",)),
        ("configmaps", "create", ()),
        ("pods", "list", ()),
    }
    env = {e["name"]: e.get("value") for e in containers(manifests)["controller"]["env"]}
    assert env["ROLLOUT_EXECUTOR"] == "kubernetes"
    assert (env["MODEL_SERVER_DEPLOYMENT"], env["SERVED_MODEL_CONFIGMAP"]) == (
        "model-server",
        "served-model",
    )


def test_the_gateway_mounts_what_the_controller_publishes(manifests):
    gateway = find(manifests, "Deployment", "gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gateway["containers"][0]["env"]}
    (volume,) = [v for v in gateway["volumes"] if "configMap" in v]
    (mount,) = [m for m in gateway["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert volume["configMap"]["name"] == "served-model"
    assert env["MODEL_INFO_PATH"] == f"{mount['mountPath']}/served-model.json"
    assert env["GATEWAY_UPSTREAM_URL"] == "http://model-server:5001"


def test_the_prometheus_rule_holds_the_rules_compose_loads(manifests):
    rule = find(manifests, "PrometheusRule", "property-friends")
    expected = yaml.safe_load(RULES_FILE.read_text())["groups"]
    assert rule["spec"]["groups"] == expected, "run `make kubernetes-rules`"
    loaded = yaml.safe_load(PROMETHEUS_FILE.read_text()).get("rule_files")
    assert loaded is None or [Path(f).name for f in loaded] == [RULES_FILE.name]


def test_production_reads_the_tracking_store_from_the_secret():
    mlflow = containers(render(KUBERNETES / "overlays" / "production"))["mlflow"]
    env = {e["name"]: e for e in mlflow["env"]}
    secret = {"name": "property-friends", "key": "mlflow-backend-store-uri"}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {
        "name": "MLFLOW_BACKEND_STORE_URI",
        "valueFrom": {"secretKeyRef": secret},
    }


def without_own_options(command: list[str]) -> list[str]:
    kept: list[str] = []
    for token in command:
        if kept and kept[-1] in OWN_OPTIONS:
            kept.pop()
        else:
            kept.append(token)
    return kept


def image_user() -> int:
    users = [
        line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("USER ")
    ]
    return int(users[-1].split(":")[0])


@pytest.fixture(scope="module")
def compose_services() -> dict[str, dict[str, Any]]:
    return compose_config(example_variables())["services"]


def test_kubernetes_runs_each_role_as_compose_and_the_image_suite_run_it(
    manifests, compose_services
):
    """Command, user, port, liveness probe and mounted paths of each role shared with compose."""
    pods = {
        c["name"]: m["spec"]["template"]["spec"]
        for m in manifests
        if m["kind"] == "Deployment"
        for c in m["spec"]["template"]["spec"]["containers"]
    }
    for role in SHARED_ROLES:
        service, container = compose_services[role], containers(manifests)[role]
        assert without_own_options(container["command"]) == without_own_options(
            service["command"]
        ), role
        assert pods[role]["securityContext"]["runAsUser"] == image_user(), role
        health = urlsplit(service["environment"]["HEALTHCHECK_URL"])
        assert [p["containerPort"] for p in container["ports"]] == [health.port], role
        assert container["livenessProbe"]["httpGet"]["path"] == health.path, role
        compose_mounts = {v["target"]: bool(v.get("read_only")) for v in service["volumes"]}
        tmpfs = (path.split(":")[0] for path in service.get("tmpfs") or ())
        compose_mounts |= dict.fromkeys(tmpfs, False)
        mounts = {m["mountPath"]: bool(m.get("readOnly")) for m in container["volumeMounts"]}
        assert mounts.items() <= compose_mounts.items(), role


def test_the_accuracy_cronjob_reads_the_store_the_gateways_write(manifests):
    (cronjob,) = [m for m in manifests if m["kind"] == "CronJob"]
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["python", "-m", "steps.monitor", "accuracy"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    store = {
        "name": "PREDICTION_STORE_URL",
        "valueFrom": {"secretKeyRef": {"name": "property-friends", "key": "prediction-store-url"}},
    }
    assert store in container["env"]
    assert store in containers(manifests)["gateway"]["env"]
    declared = {name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    assert {e["name"] for e in container["env"]} <= declared
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert set(container["resources"]) == {"requests", "limits"}
