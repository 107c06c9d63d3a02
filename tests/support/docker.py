"""The project's images, built and run for real: a Docker engine (started here when none runs),
a Python base image, the two build targets, and compose's own services run as containers on
host networking with free ports.

docker/docker-compose.yml is the one source of what each role runs: `docker-compose config`
(Compose v2) resolves it, and `run_args` turns one resolved service into `docker run`
arguments: its command, environment, user, read-only root, tmpfs, capabilities and volumes,
with the other services' host names and ports mapped to 127.0.0.1 and free ports (in the
files it mounts from the checkout too: `HostNetwork.copy`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import VENV_BIN, wait_until

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
COMPOSE = VENV_BIN / "docker-compose"
CONFIG_JSON = ("config", "--format", "json")
# How the daemon runs here: no systemd, no iptables, no bridge (containers on host networking).
DOCKERD_FLAGS = (
    "--storage-driver=overlay2",
    "--iptables=false",
    "--ip6tables=false",
    "--bridge=none",
)
OFFICIAL_BASE = "python:3.11.11-slim-bookworm"  # the Dockerfile's PYTHON_IMAGE default
STAND_IN_BASE = "property-friends-base:bookworm-python3.11"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_PACKAGES = "python3.11,python3-venv,python3-pip,python-is-python3,ca-certificates"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
INSTALL_HINT = "make image-deps installs Debian's docker.io and debootstrap"


class NoEngine(RuntimeError):
    """No Docker engine runs here and none could be started."""


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    """`docker args...`; its stdout, or AssertionError with its output when it fails."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:4])} ... exited {result.returncode}:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def attempt(*args: str, timeout: float = 120) -> tuple[int, str]:
    """`docker args...` that may fail: its exit code and everything it printed."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    return result.returncode, result.stdout + result.stderr


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return result.returncode == 0


@contextlib.contextmanager
def docker_engine(log_path: Path, timeout: float = 60) -> Iterator[None]:
    """A Docker engine for the block: the one that runs, or dockerd started here and stopped
    after; NoEngine (with the reason) when there is none and none can be started."""
    if engine_answers():
        yield
        return
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        raise NoEngine(f"no docker/dockerd on PATH ({INSTALL_HINT})")
    if os.geteuid() != 0:
        raise NoEngine("no Docker engine runs, and only root can start dockerd here")
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(
            ["dockerd", *DOCKERD_FLAGS],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not engine_answers():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise NoEngine(f"dockerd did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)


def run_or_fail(command: list[str], timeout: float = 900) -> None:
    """Run `command`; AssertionError with the end of its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command[:2])} exited {result.returncode}:\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def python_base() -> str:
    """The Dockerfile's base: the official image where it can be pulled; elsewhere a stand-in
    of the same Debian release and Python, made from Debian's packages (debootstrap), with this
    machine's CA certificates (pip in the build trusts what the host trusts)."""
    for tag in (OFFICIAL_BASE, STAND_IN_BASE):
        if image_exists(tag):
            return tag
    with contextlib.suppress(subprocess.TimeoutExpired):  # a registry that does not answer
        if attempt("pull", OFFICIAL_BASE, timeout=300)[0] == 0:
            return OFFICIAL_BASE
    if shutil.which("debootstrap") is None:
        raise AssertionError(
            f"{OFFICIAL_BASE} cannot be pulled and debootstrap is missing ({INSTALL_HINT})"
        )
    with tempfile.TemporaryDirectory(prefix="base-rootfs-") as rootfs:
        include = f"--include={DEBOOTSTRAP_PACKAGES}"
        run_or_fail(
            ["debootstrap", "--variant=minbase", include, "bookworm", rootfs, DEBIAN_MIRROR]
        )
        for certificate in HOST_CA_DIR.glob("*.crt"):
            shutil.copy(certificate, Path(rootfs) / HOST_CA_DIR.relative_to("/") / certificate.name)
        run_or_fail(["chroot", rootfs, "update-ca-certificates"])
        for cache in ("var/lib/apt/lists", "var/cache/apt"):
            shutil.rmtree(Path(rootfs) / cache, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["docker", "import", "-", STAND_IN_BASE],
            stdin=tar.stdout,
            capture_output=True,
            check=True,
        )
        tar.wait()
    return STAND_IN_BASE


def build(target: str, tag: str, base: str) -> float:
    """Build one target of docker/Dockerfile from the repository root; the seconds it took."""
    started = time.monotonic()
    docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "-f",
        str(DOCKERFILE),
        "--target",
        target,
        "-t",
        tag,
        str(ROOT),
        timeout=1800,
    )
    return time.monotonic() - started


def image_megabytes(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).strip()) / 1e6


def example_variables() -> dict[str, str]:
    """docker/.env.example's variables (placeholders for the secrets)."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{ENV_EXAMPLE.name}: not NAME=value: {line!r}"
            pairs[name.strip()] = value
    return pairs


def compose_config_run(variables: Mapping[str, str]) -> subprocess.CompletedProcess:
    """`docker-compose config` (Compose v2, the `dev` extra) on docker-compose.yml with
    `variables` alone (no docker/.env of this checkout)."""
    return subprocess.run(
        [
            str(COMPOSE),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            os.devnull,
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **variables},
        timeout=60,
        check=False,
    )


def compose_config(variables: Mapping[str, str]) -> dict[str, Any]:
    """docker/docker-compose.yml as Compose v2 resolves it with `variables` (docker/.env's)."""
    result = compose_config_run(variables)
    if result.returncode != 0 or not result.stdout:  # 2.40 exits 0 on a missing variable
        raise AssertionError(f"docker-compose config failed:\n{result.stderr}")
    return json.loads(result.stdout)


@dataclass
class HostNetwork:
    """Where compose's services are reached once they share the host's network: every host
    name at 127.0.0.1, every container port at a free port of its own."""

    ports: dict[int, int]  # container port -> host port
    hosts: frozenset[str]  # compose's service names

    def url(self, text: str) -> str:
        """`text` with `service:port` and `127.0.0.1:port` moved to 127.0.0.1 and the free port."""

        def move(match: re.Match[str]) -> str:
            port = int(match["port"])
            return f"127.0.0.1:{self.ports.get(port, port)}"

        names = "|".join(re.escape(h) for h in sorted(self.hosts | {"127.0.0.1", "localhost"}))
        return re.sub(rf"(?<![\w.-])(?:{names}):(?P<port>\d+)\b", move, text)

    def option_value(self, value: str) -> str:
        """An option's value: a service name becomes 127.0.0.1, a container port its port."""
        if value in self.hosts:
            return "127.0.0.1"
        if value.isdigit() and int(value) in self.ports:
            return str(self.ports[int(value)])
        return self.url(value)

    def command(self, tokens: Sequence[str]) -> list[str]:
        """A command line with the values of its options moved (the program and its other
        arguments kept: `mlflow` is a program as well as a service)."""
        return [*tokens[:1], *(
            self.option_value(token) if previous.startswith("--") else token
            for previous, token in itertools.pairwise(tokens)
        )]  # fmt: skip

    def variable(self, name: str, value: str) -> str:
        if name.endswith("_PORT") and value.isdigit():
            return str(self.ports.get(int(value), int(value)))
        return self.url(value)

    def copy(self, source: Path, folder: Path) -> Path:
        """A copy of a file a service mounts, in `folder`, with its hosts and ports moved,
        readable by the containers' user."""
        copied = folder / source.name
        copied.write_text(self.url(source.read_text()))
        copied.chmod(0o644)
        return copied


@dataclass
class Role:
    """One compose service run with `docker run`; its volumes are named per test session, and
    each of its bind mounts takes its source from `binds` (compose's source -> this host's)."""

    service: str
    spec: dict[str, Any]
    image: str
    network: HostNetwork
    volume_prefix: str
    binds: Mapping[str, Path] = field(default_factory=dict)
    name: str = field(default="")

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.volume_prefix}-{self.service}"

    @property
    def command(self) -> list[str]:
        return self.network.command(self.spec.get("command") or ())

    @property
    def environment(self) -> dict[str, str]:
        variables = self.spec.get("environment") or {}
        return {k: self.network.variable(k, str(v)) for k, v in variables.items() if v is not None}

    def run_args(self, detach: bool = True) -> list[str]:
        """`docker run` arguments that run the service as compose declares it, on the host's
        network."""
        spec = self.spec
        args = ["run", "--name", self.name, "--network", "host"]
        args += ["-d"] if detach else ["--rm"]
        if spec.get("read_only"):
            args.append("--read-only")
        for path in spec.get("tmpfs") or ():
            args += ["--tmpfs", path]
        for capability in spec.get("cap_drop") or ():
            args += ["--cap-drop", capability]
        for option in spec.get("security_opt") or ():
            args += ["--security-opt", option]
        if spec.get("user"):
            args += ["--user", spec["user"]]
        restart = spec.get("restart")
        if restart and restart != "no" and detach:
            args += ["--restart", restart]
        for volume in spec.get("volumes") or ():
            args += ["--mount", self._mount(volume)]
        for key, value in self.environment.items():
            args += ["-e", f"{key}={value}"]
        if (spec.get("healthcheck") or {}).get("disable"):
            args.append("--no-healthcheck")
        else:
            args += ["--health-interval", "2s"]  # the image's own probe, checked more often
        return [*args, self.image, *self.command]

    def _mount(self, volume: dict[str, Any]) -> str:
        if volume["type"] == "volume":
            source = f"type=volume,source={self.volume_prefix}-{volume['source']}"
        elif volume["type"] == "bind" and volume["source"] in self.binds:
            source = f"type=bind,source={self.binds[volume['source']]}"
        else:
            raise AssertionError(f"{self.service}: no source given here for {volume}")
        return f"{source},target={volume['target']}" + (
            ",readonly" if volume.get("read_only") else ""
        )


def remove(names: Sequence[str], volume_prefix: str) -> None:
    """Remove the containers and the volumes of one test session, whatever their state."""
    if names:
        docker("rm", "-f", "-v", *names, check=False)
    volumes = docker(
        "volume", "ls", "-q", "--filter", f"name={volume_prefix}-", check=False
    ).split()
    if volumes:
        docker("volume", "rm", "-f", *volumes, check=False)


def health(name: str) -> str:
    return docker(
        "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", name
    ).strip()


def wait_healthy(name: str, timeout: float) -> float:
    """Until the container's own HEALTHCHECK says healthy; the seconds it took."""
    started = time.monotonic()

    def healthy() -> bool:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", name))
        if not state["Running"] and not state.get("Restarting"):
            raise AssertionError(f"{name} exited {state['ExitCode']}:\n{logs(name)}")
        return (state.get("Health") or {}).get("Status") == "healthy"

    wait_until(healthy, timeout, f"container {name} healthy", interval=0.5)
    return time.monotonic() - started


def logs(name: str, tail: int = 60) -> str:
    result = subprocess.run(
        ["docker", "logs", "--tail", str(tail), name], capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr


def process_uids(name: str) -> dict[str, str]:
    """Every process of the container: its pid and whole command line -> its user id, read
    from the host's /proc (`docker top` cuts command lines at the daemon's terminal width)."""
    pids = docker("top", name, "-eo", "pid").split()[1:]
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
            found[f"{pid} {command.strip()}"] = re.search(r"Uid:\s+(\d+)", status)[1]  # type: ignore[index]
    return found


def resident_mb(name: str) -> dict[str, float]:
    """Every process of the container (pid and command line) -> its resident memory in MB,
    read from the host's /proc."""
    sizes = {}
    for process in process_uids(name):
        status = Path(f"/proc/{process.split()[0]}/status").read_text()
        sizes[process] = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024  # type: ignore[index]
    return sizes


def main_pid(name: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", name).strip())


def session_prefix() -> str:
    return f"pf-images-{uuid.uuid4().hex[:8]}"


@dataclass
class Pod:
    """One container of a Kubernetes Deployment run with `docker run` as its pod spec says:
    command, user and group, read-only root, no privilege escalation, dropped capabilities,
    each emptyDir volume as a tmpfs owned by the pod's fsGroup; on the host's network, with
    service names and ports mapped like compose's. `values` stand for what the cluster
    supplies (secrets, the downward API) to the environment, `folders` for the volumes it
    mounts from secrets and ConfigMaps (volume name -> a folder of this host)."""

    deployment: dict[str, Any]
    image: str
    network: HostNetwork
    name: str
    values: Mapping[str, str] = field(default_factory=dict)
    folders: Mapping[str, Path] = field(default_factory=dict)

    @property
    def spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.spec["containers"]
        return container

    def url(self, port_name: str, path: str) -> str:
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port_name]
        return f"http://127.0.0.1:{self.network.ports.get(port, port)}{path}"

    def run_args(self) -> list[str]:
        pod, container = self.spec["securityContext"], self.container
        security = container["securityContext"]
        args = ["run", "-d", "--name", self.name, "--network", "host", "--no-healthcheck"]
        args += ["--user", f"{pod['runAsUser']}:{pod['runAsGroup']}"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges:true"]
        for capability in security["capabilities"]["drop"]:
            args += ["--cap-drop", capability]
        args += self._volumes(pod["fsGroup"])
        for variable in container.get("env", ()):
            name = variable["name"]
            value = variable["value"] if "value" in variable else self.values[name]
            args += ["-e", f"{name}={self.network.variable(name, value)}"]
        return [*args, self.image, *self.network.command(container["command"])]

    def _volumes(self, group: int) -> list[str]:
        empty = {v["name"] for v in self.spec.get("volumes", ()) if "emptyDir" in v}
        args = []
        for mount in self.container.get("volumeMounts", ()):
            name, path = mount["name"], mount["mountPath"]
            if name in empty:
                args += ["--tmpfs", f"{path}:uid={group},gid={group}"]
            elif name in self.folders:
                readonly = ",readonly" if mount.get("readOnly") else ""
                args += [
                    "--mount",
                    f"type=bind,source={self.folders[name]},target={path}{readonly}",
                ]
        return args
