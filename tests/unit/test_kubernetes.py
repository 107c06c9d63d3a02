"""The Kubernetes manifests, checked offline: every overlay of docker/kubernetes renders with
`kubectl kustomize`, validates against the Kubernetes API schemas (kubernetes-validate,
strict), passes checkov with every skipped check justified in the manifests, and keeps the
project's contracts: settings' variables, probes, security context, who reaches the model
servers, the controller's permissions and the alerting rules compose loads; each role logs in
to the tracking server as compose's does, with its password from a secret only."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
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
from tests.support.readme import bash_commands

KUBERNETES_VERSION = "1.31.0"  # the oldest minor still supported upstream when written
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator CRDs
RULES_FILE = ROOT / "docker" / "prometheus" / "alerts.yml"
PROMETHEUS_FILE = ROOT / "docker" / "prometheus" / "prometheus.yml"  # compose's
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
IMAGES = {"gateway": "property-friends-gateway"}  # the others run the model image
PROJECT_IMAGES = {"property-friends", "property-friends-gateway"}
# What a project container may set besides the settings: the tracking server's own variables
# (its basic-auth app's too), libpq's password and HOME (on the writable /tmp: the root
# filesystem is read-only).
OTHER_VARIABLES = {
    *("MLFLOW_BACKEND_STORE_URI", "MLFLOW_SERVER_ALLOWED_HOSTS", "HOME", "PGPASSWORD"),
    *("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob"}
# The roles compose runs (and the image suite runs from it) that Kubernetes runs too, and the
# options each sets its own way: compose's pool is reached as `controller` (Kubernetes: through
# service/model-server).
SHARED_ROLES = ("gateway", "controller", "mlflow")
OWN_OPTIONS = {"--public-host"}
ONE_SHOT_ROLES = ("roles", "trainer", "release")  # compose's one-shot services: Job, CronJobs
# compose's variables a Kubernetes one-shot leaves to another workload: compose's trainer
# container also runs the accuracy job, which is CronJob monitor-accuracy on Kubernetes.
RUN_ELSEWHERE = {"trainer": {"PREDICTION_STORE_URL"}}
# Who logs in to the tracking server (steps/roles.py), the model servers as the controller's pool.
LOGINS = {
    "controller": "controller",
    "model-server": "controller",
    "roles": "admin",
    "trainer": "trainer",
    "release": "releaser",
    "monitor-accuracy": "trainer",  # logs runs; compose runs it in the trainer's container
}
SECRET_NAMES = ("PASSWORD", "SECRET_KEY")  # variables that hold a secret
AUTH_INI = ROOT / "docker" / "mlflow" / "basic_auth.ini"
INITDB = ROOT / "docker" / "postgres" / "initdb"
README = ROOT / "README.md"
PROBES = {
    "gateway": {"readinessProbe": "/ready", "livenessProbe": "/health"},
    "model-server": {"readinessProbe": "/ping", "livenessProbe": "/ping", "startupProbe": "/ping"},
}


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request) -> list[dict[str, Any]]:
    return render(KUBERNETES / "overlays" / request.param)


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a workload (a CronJob's through its job template)."""
    spec = manifest["spec"]
    if manifest["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def pods(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every workload's pod spec by the workload's name."""
    return {m["metadata"]["name"]: pod_spec(m) for m in manifests if m["kind"] in WORKLOADS}


def containers(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for pod in pods(manifests).values() for c in pod["containers"]}


def project_containers(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The containers of the project's two images."""
    return {
        name: c
        for name, c in containers(manifests).items()
        if c["image"].rsplit("/", 1)[-1].split(":")[0] in PROJECT_IMAGES
    }


def env_values(container: dict[str, Any]) -> dict[str, Any]:
    """Each variable's value, or its `valueFrom` for one read from elsewhere."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", ())}


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
    assert {"mlflow", "controller", "trainer", "release"} <= set(project_containers(manifests))
    for name, container in project_containers(manifests).items():
        image = IMAGES.get(name, "property-friends")
        assert container["image"].rsplit("/", 1)[-1].split(":")[0] == image, name
        assert {e["name"] for e in container["env"]} <= declared, name


def test_pods_run_as_non_root_on_a_read_only_root_with_bounded_resources(manifests):
    assert {"Deployment", "Job", "CronJob"} <= {m["kind"] for m in manifests}
    for pod in pods(manifests).values():
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


def test_local_runs_postgresql_and_production_points_at_its_own(compose_services):
    local, production = (render(KUBERNETES / "overlays" / name) for name in OVERLAYS)
    database = find(local, "StatefulSet", "postgres")
    (container,) = pod_spec(database)["containers"]
    assert container["image"] == compose_services["postgres"]["image"]
    assert find(local, "Service", "postgres")["spec"]["selector"] == {
        "app.kubernetes.io/name": "postgres"
    }
    assert not [m for m in production if m["kind"] == "StatefulSet"]
    external = find(production, "Service", "postgres")["spec"]
    assert external["type"] == "ExternalName"
    assert [p["port"] for p in external["ports"]] == [5432]


def test_the_initdb_scripts_and_the_auth_ini_are_compose_s_byte_for_byte(manifests):
    auth = find(manifests, "ConfigMap", "mlflow-auth")
    assert auth["data"] == {AUTH_INI.name: AUTH_INI.read_text()}
    initdb = find(render(KUBERNETES / "overlays" / "local"), "ConfigMap", "postgres-initdb")
    assert initdb["data"] == {path.name: path.read_text() for path in INITDB.glob("*.sql")}


def test_the_tracking_server_stores_where_compose_s_does_without_a_password_in_the_uri(
    manifests, compose_services
):
    env = env_values(containers(manifests)["mlflow"])
    compose = urlsplit(compose_services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"])
    netloc = f"{compose.username}@{compose.hostname}:{compose.port}"
    assert env["MLFLOW_BACKEND_STORE_URI"] == compose._replace(netloc=netloc).geturl()
    assert env["PGPASSWORD"] == {
        "secretKeyRef": {"name": "property-friends", "key": "postgres-password"}
    }


def test_each_role_logs_in_as_its_own_user_with_its_password_from_a_secret(manifests):
    logins = {}
    for name, container in project_containers(manifests).items():
        env = env_values(container)
        logins[name] = env.get("MLFLOW_TRACKING_USERNAME")
        if logins[name] is not None:
            secret = {"name": "mlflow-users", "key": f"{logins[name]}-password"}
            assert env["MLFLOW_TRACKING_PASSWORD"] == {"secretKeyRef": secret}, name
    assert {name: user for name, user in logins.items() if user} == LOGINS
    assert "MLFLOW_TRACKING_URI" not in env_values(containers(manifests)["gateway"])


def test_secrets_come_only_from_secrets_never_from_arguments_or_urls(manifests):
    for name, container in containers(manifests).items():
        for variable, value in env_values(container).items():
            if any(word in variable for word in SECRET_NAMES) and not variable.endswith("_FILE"):
                assert set(value) == {"secretKeyRef"}, (name, variable)
            elif isinstance(value, str):
                assert urlsplit(value).password is None, (name, variable)
        for token in container.get("command", ()):
            assert not any(word.lower() in token.lower() for word in SECRET_NAMES), name
            assert urlsplit(token.partition("=")[2] or token).password is None, name


def test_the_tracking_server_is_reached_by_the_pods_that_log_in_to_it(manifests):
    policy = find(manifests, "NetworkPolicy", "mlflow")
    (rule,) = policy["spec"]["ingress"]
    allowed = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    }
    assert allowed == set(LOGINS)


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


def test_kubernetes_runs_compose_s_one_shot_roles_with_compose_s_environment(
    manifests, compose_services
):
    """The roles Job and the trainer and release CronJobs: compose's command, user and
    variables, every value but the secrets the same (the secrets come from secretKeyRef)."""
    for role in ONE_SHOT_ROLES:
        service, container = compose_services[role], containers(manifests)[role]
        assert container["command"] == service["command"], role
        assert pods(manifests)[role]["securityContext"]["runAsUser"] == image_user(), role
        env = env_values(container)
        expected = set(service["environment"]) - RUN_ELSEWHERE.get(role, set())
        assert set(env) - {"HOME"} == expected, role
        plain = {k: v for k, v in env.items() if isinstance(v, str) and k != "HOME"}
        assert plain == {k: service["environment"][k] for k in plain}, role
        assert {k for k, v in env.items() if not isinstance(v, str)} == {
            k for k in env if any(word in k for word in SECRET_NAMES)
        }, role
        assert pods(manifests)[role]["restartPolicy"] == "Never", role


def secret_keys_read(manifests: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(secret, key) of every secret the manifests read: environment, volumes, scrape auth."""
    found = {
        (ref["name"], ref["key"])
        for container in containers(manifests).values()
        for e in container.get("env", ())
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }
    for pod in pods(manifests).values():
        for volume in pod.get("volumes", ()):
            if "secret" in volume:
                items = volume["secret"]["items"]
                found |= {(volume["secret"]["secretName"], item["key"]) for item in items}
    for endpoint in find(manifests, "ServiceMonitor", "property-friends")["spec"]["endpoints"]:
        if credentials := endpoint.get("authorization", {}).get("credentials"):
            found.add((credentials["name"], credentials["key"]))
    return found


def readme_secret_keys() -> set[tuple[str, str]]:
    """(secret, key) of every `kubectl create secret generic` of the README."""
    found = set()
    for command in bash_commands(README.read_text()):
        created = re.search(r"create secret generic (\S+) (.*)", command)
        for option in shlex.split(created[2]) if created else ():
            kind, _, value = option.partition("=")
            if kind in {"--from-literal", "--from-file"}:
                found.add((created[1], Path(value.partition("=")[0]).name))
    return found


def test_the_readme_creates_every_secret_key_the_overlays_read(manifests):
    assert secret_keys_read(manifests) <= readme_secret_keys()
    assert {("mlflow-users", f"{user}-password") for user in set(LOGINS.values())} <= (
        secret_keys_read(manifests)
    )


def test_the_accuracy_cronjob_reads_the_store_the_gateways_write(manifests):
    cronjob = find(manifests, "CronJob", "monitor-accuracy")
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
