"""The image suite's stack: both images built from the lock files, then compose's roles run as
containers on host networking with free ports: the tracking server with MLflow's basic-auth app
on PostgreSQL (its databases made as compose's initdb makes them), `roles` making its users,
the trainer registering a candidate, `release` promoting it, the controller with its pool on the
read-only login, the gateway with its keys file's folder mounted and its prediction store in
PostgreSQL. Its facts (sizes, build and start times) go to bench-results/images.json and to the
end of the run's output."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests

from pyfunc.schema import example_listing
from serving.servers import SCORING_APP
from tests.support.auth import ROLES
from tests.support.docker import (
    HostNetwork,
    NoEngine,
    Role,
    build,
    compose_config,
    docker,
    docker_engine,
    image_megabytes,
    python_base,
    remove,
    resident_mb,
    session_prefix,
    wait_healthy,
)
from tests.support.gateway import ALICE_KEY, API_KEYS, write_keys_file
from tests.support.postgres import running_postgres
from tests.support.processes import free_port, wait_until
from tests.support.stack import SMALL_SOURCE

ROOT = Path(__file__).resolve().parents[2]
FACTS_FILE = ROOT / "bench-results" / "images.json"
TARGETS = {"gateway": "gateway", "model": "mlflow"}  # build target -> a service that runs it
CONTAINER_PORTS = (5000, 5432, 8000, 9101)  # tracking, PostgreSQL, gateway, controller
START_TIMEOUT = 300
FACTS: dict[str, object] = {}
# compose's services in the order they start (one-shots run to their end)
SERVICES = ("mlflow", "roles", "trainer", "release", "controller", "gateway")
# What compose mounts from the checkout: the auth app's ini, the gateway's keys folder.
AUTH_INI = ROOT / "docker" / "mlflow" / "basic_auth.ini"
KEYS_FOLDER = ROOT / "docker" / "gateway-keys"
INITDB = ROOT / "docker" / "postgres" / "initdb"  # compose's PostgreSQL runs it on its first start
KEYS_FILE = "/etc/property-friends/keys/keys.jsonl"  # GATEWAY_API_KEYS_FILE, in the container
# docker/.env's secrets: the tracking server's admin, its session key and its users' passwords
PASSWORDS = {user: secrets.token_hex(12) for user in ("admin", *ROLES)}


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    try:
        with docker_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log"):
            yield
    except NoEngine as reason:
        pytest.skip(f"image suite skipped: no Docker engine can be started here: {reason}")


@pytest.fixture(scope="session")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """docker-compose.yml resolved with the variables docker/.env would set."""
    variables = {
        "POSTGRES_USER": "mlflow",  # basic_auth.ini's
        "POSTGRES_PASSWORD": "unused-the-test-server-trusts-127.0.0.1",
        "GATEWAY_API_KEYS": API_KEYS,
        "GATEWAY_API_KEYS_FILE": KEYS_FILE,
        "GRAFANA_ADMIN_PASSWORD": "unused",
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORDS["admin"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        **{f"MLFLOW_{role.upper()}_PASSWORD": PASSWORDS[role] for role in ROLES},
        "IMAGE_TAG": "test",
        "DATA_SOURCE": SMALL_SOURCE,
        "MODEL_SERVERS": "2",
    }
    return compose_config(variables)


@pytest.fixture(scope="session")
def images(engine: None, compose: dict) -> dict[str, str]:
    """Both targets built, tagged as compose names them; build facts recorded."""
    started = time.monotonic()
    base = python_base()
    FACTS["base_image"] = base
    FACTS["base_seconds"] = round(time.monotonic() - started, 1)
    tags = {}
    for target, service in TARGETS.items():
        tag = compose["services"][service]["image"]
        FACTS[f"{target}_build_seconds"] = round(build(target, tag, base), 1)
        FACTS[f"{target}_image_mb"] = round(image_megabytes(tag))
        tags[target] = tag
    return tags


@dataclass
class Stack:
    network: HostNetwork
    roles: dict[str, Role]
    prefix: str
    keys_folder: Path  # mounted where compose mounts docker/gateway-keys
    started: list[str] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.network.ports[8000]}"

    @property
    def tracking_url(self) -> str:
        return f"http://127.0.0.1:{self.network.ports[5000]}"

    def registry(self, method: str, path: str, user: str | None, **kwargs) -> requests.Response:
        """The tracking server's REST API (/api/2.0/mlflow/`path`) as `user` (None: anonymous)."""
        auth = (user, PASSWORDS[user]) if user else None
        url = f"{self.tracking_url}/api/2.0/mlflow/{path}"
        return requests.request(method, url, auth=auth, timeout=30, **kwargs)

    def price(self, headers: dict[str, str]) -> requests.Response:
        """The gateway's answer to one listing."""
        return requests.post(
            f"{self.gateway_url}/invocations",
            json={"dataframe_records": [example_listing()]},
            headers=headers,
            timeout=30,
        )

    def priced(self) -> requests.Response | None:
        """A priced answer to one listing through the gateway with a key, or None."""
        try:
            response = self.price({"X-API-Key": ALICE_KEY})
        except requests.RequestException:
            return None
        return response if response.status_code == 200 else None

    def prices_steadily(self, answers: int = 20) -> bool:
        """Whether `answers` requests in a row are priced: each gateway worker reads the
        served-model file on its own, within a second of the others."""
        return all(self.priced() is not None for _ in range(answers))

    def start(self, service: str) -> float:
        """Run the service's container; the seconds until its HEALTHCHECK says healthy."""
        role = self.roles[service]
        started = time.monotonic()
        docker(*role.run_args())
        self.started.append(role.name)
        wait_healthy(role.name, START_TIMEOUT)
        return time.monotonic() - started

    def run_once(self, service: str) -> float:
        """Run a one-shot service to its end; the seconds it took."""
        started = time.monotonic()
        docker(*self.roles[service].run_args(detach=False), timeout=1200)
        return time.monotonic() - started


def initdb_statements() -> list[str]:
    """The SQL statements of docker/postgres/initdb/, in the order the postgres image runs them
    (one at a time: CREATE DATABASE runs outside a transaction)."""
    statements = []
    for script in sorted(INITDB.glob("*.sql")):
        code = "\n".join(line.split("--", 1)[0] for line in script.read_text().splitlines())
        statements += [s.strip() for s in code.split(";") if s.strip()]
    return statements


def create_databases(port: int, user: str) -> None:
    """compose's PostgreSQL as the postgres image leaves it: POSTGRES_USER owning POSTGRES_DB
    (`mlflow`, the backend store), then docker/postgres/initdb/ run as that user."""
    with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres", autocommit=True) as db:
        db.execute(f"CREATE ROLE {user} LOGIN CREATEDB")
        db.execute(f"CREATE DATABASE mlflow OWNER {user}")
    with psycopg.connect(f"host=127.0.0.1 port={port} user={user} dbname=mlflow") as db:
        db.autocommit = True
        for statement in initdb_statements():
            db.execute(statement)


@pytest.fixture(scope="session")
def mounted() -> Iterator[Path]:
    """A folder of this host for what the containers mount from the checkout (readable by
    their user): the ini's copy, and keys/ holding a keys file that lists no key yet."""
    folder = Path(tempfile.mkdtemp(prefix="pf-images-mounts-"))
    folder.chmod(0o755)
    (folder / "keys").mkdir(mode=0o755)
    write_keys_file(folder / "keys" / Path(KEYS_FILE).name)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="session")
def stack(images: dict[str, str], compose: dict, mounted: Path) -> Iterator[Stack]:
    """Tracking server, its users, trainer (candidate 1), release (version 1, the champion),
    controller and gateway, as compose runs them."""
    with running_postgres() as url:
        database_port = int(url.rsplit(":", 1)[1].split("/")[0])
        create_databases(
            database_port, compose["services"]["postgres"]["environment"]["POSTGRES_USER"]
        )
        ports = {port: free_port() for port in CONTAINER_PORTS} | {5432: database_port}
        network = HostNetwork(ports, frozenset(compose["services"]))
        binds = {str(AUTH_INI): network.copy(AUTH_INI, mounted), str(KEYS_FOLDER): mounted / "keys"}
        prefix = session_prefix()
        roles = {
            name: Role(name, spec, spec["image"], network, prefix, binds)
            for name, spec in ((name, compose["services"][name]) for name in SERVICES)
        }
        stack = Stack(network, roles, prefix, mounted / "keys")
        try:
            FACTS["tracking_start_seconds"] = round(stack.start("mlflow"), 1)
            FACTS["roles_seconds"] = round(stack.run_once("roles"), 1)
            FACTS["trainer_seconds"] = round(stack.run_once("trainer"), 1)
            FACTS["release_seconds"] = round(stack.run_once("release"), 1)
            started = time.monotonic()
            FACTS["controller_healthy_seconds"] = round(stack.start("controller"), 1)
            FACTS["gateway_healthy_seconds"] = round(stack.start("gateway"), 1)
            wait_until(stack.prices_steadily, START_TIMEOUT, "priced answers", interval=1)
            FACTS["controller_to_first_price_seconds"] = round(time.monotonic() - started, 1)
            FACTS.update(serving_memory(stack))
            yield stack
        finally:
            remove([*stack.started, *(role.name for role in roles.values())], prefix)


def serving_memory(stack: Stack) -> dict[str, float]:
    """Resident MB of the serving stack: the controller itself, each model server, the
    gateway's processes, and all of them together."""
    controller = resident_mb(stack.roles["controller"].name)
    servers = [mb for command, mb in controller.items() if SCORING_APP in command]
    gateway = sum(resident_mb(stack.roles["gateway"].name).values())
    return {
        "controller_rss_mb": round(sum(controller.values()) - sum(servers)),
        "model_server_rss_mb": round(max(servers)),
        "gateway_rss_mb": round(gateway),
        "serving_stack_rss_mb": round(sum(controller.values()) + gateway),
    }


@pytest.fixture(scope="session", autouse=True)
def facts_file() -> Iterator[None]:
    started = time.monotonic()
    yield
    if FACTS:
        FACTS["suite_seconds"] = round(time.monotonic() - started, 1)
        FACTS_FILE.parent.mkdir(exist_ok=True)
        FACTS_FILE.write_text(json.dumps(FACTS, indent=2))


def pytest_terminal_summary(terminalreporter) -> None:  # pytest's reporter
    if FACTS:
        terminalreporter.section("images")
        for name, value in FACTS.items():
            terminalreporter.write_line(f"{name:28} {value}")
