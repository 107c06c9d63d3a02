"""Model server processes of the pool: start, probe, stop.

Each server is one single-worker MLflow scoring server (uvicorn) on the local copy of a version,
started in a session of its own: it outlives the controller that started it (a restarted
controller adopts it by pid) and is stopped as a process group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import urllib3

from config.settings import Settings

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = urllib3.Timeout(connect=1.0, read=10.0)
STOP_GRACE_SECONDS = 10.0
KILL_WAIT_SECONDS = 2.0
SCORING_APP = "mlflow.pyfunc.scoring_server.app:app"  # uvicorn's argument: the scoring server
# What MLflow's scoring_server.get_cmd sets for the app (tests/unit/test_servers.py compares)
MODEL_PATH_VARIABLE = "__pyfunc_model_path__"
TIMEOUT_VARIABLE = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
_http = urllib3.PoolManager(retries=False, timeout=PROBE_TIMEOUT)


class ServerError(RuntimeError):
    """A model server did not start, or priced its canary wrong."""


class Abandoned(Exception):
    """The version being rolled out is no longer the one MODEL_URI resolves to."""


def no_check() -> None:
    """A target check that never abandons (replacing dead servers of the served version)."""


@dataclass(frozen=True)
class Server:
    """One model server: the URL the gateway uses and its process id."""

    url: str
    pid: int


@dataclass(frozen=True)
class Serving:
    """What the pool serves: the served-model file's fields and the servers."""

    info: dict[str, Any]
    servers: tuple[Server, ...]

    @property
    def version(self) -> str:
        return str(self.info.get("version"))


@dataclass(frozen=True)
class Canary:
    """The request every new server must price, and the prices the version gives it (one
    record per row, as the scoring server answers)."""

    body: bytes
    expected: list[dict[str, Any]]


def serve_command(
    settings: Settings, model_path: Path, host: str, port: int, workers: int
) -> tuple[list[str], dict[str, str]]:
    """MLflow's scoring server on a local copy: the command and environment MLflow's
    `scoring_server.get_cmd` builds for the process `mlflow models serve` runs under its
    launcher (a second Python of 250 MB that only downloads the model and waits), built here
    without importing MLflow."""
    address = ["--host", host, "--port", str(port), "--workers", str(workers)]
    environ = {
        **os.environ,
        MODEL_PATH_VARIABLE: Path(model_path).absolute().as_uri(),
        TIMEOUT_VARIABLE: str(settings.model_timeout_seconds),
    }
    return [sys.executable, "-m", "uvicorn", *address, SCORING_APP], server_env(environ)


def server_env(environ: dict[str, str]) -> dict[str, str]:
    """One OpenMP thread (one-row predictions pay for thread start-up on every tree; batches
    barely gain)."""
    return {"OMP_NUM_THREADS": "1", **environ}


def start(
    settings: Settings, model_path: Path, host: str, public_host: str, niceness: int = 0
) -> Server:
    """Start one single-worker server on the local copy `model_path` on a free port, `niceness`
    lower in the CPU's priorities than the caller; returns without waiting."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command, env = serve_command(settings, model_path, host, port, workers=1)
    with open(logs / f"model-server-{port}.log", "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    if niceness:  # before it loads the model: what it starts later inherits it
        os.setpriority(os.PRIO_PROCESS, process.pid, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    logger.info("started a model server on %s, port %d (pid %d)", model_path, port, process.pid)
    return Server(f"http://{public_host}:{port}", process.pid)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a dead child of ours is reaped on the way; a zombie that
    is not ours, whose parent does not reap it, counts as dead)."""
    with contextlib.suppress(ChildProcessError):  # not our child: adopted from an earlier one
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def is_model_server(pid: int) -> bool:
    """Whether `pid` runs MLflow's scoring server (a pid from a file may have been reused)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return SCORING_APP.encode() in command


def ping(url: str) -> bool:
    try:
        return _http.request("GET", f"{url}/ping", timeout=urllib3.Timeout(1.0, 2.0)).status == 200
    except urllib3.exceptions.HTTPError:
        return False


def wait_ready(
    servers: Sequence[Server], timeout: float, check_target: Callable[[], None] = no_check
) -> None:
    """Until every server answers /ping; ServerError when one exits or `timeout` runs out,
    Abandoned when `check_target` raises it (called every half second)."""
    deadline = time.monotonic() + timeout
    waiting = list(servers)
    while waiting:
        check_target()
        for server in [s for s in waiting if not alive(s.pid)]:
            raise ServerError(
                f"the model server {server.url} (pid {server.pid}) exited at "
                f"start; see its log under STATE_DIR/logs"
            )
        waiting = [s for s in waiting if not ping(s.url)]
        if waiting and time.monotonic() > deadline:
            raise ServerError(
                f"{len(waiting)} model server(s) did not answer /ping within "
                f"{timeout:g} s: {', '.join(s.url for s in waiting)}"
            )
        if waiting:
            time.sleep(0.5)


def check_canary(server: Server, checked: Canary) -> None:
    """POST the canary; ServerError unless the server prices it as the version did in its
    checks."""
    response, headers = None, {"Content-Type": "application/json"}
    try:
        response = _http.request(
            "POST", f"{server.url}/invocations", body=checked.body, headers=headers
        )
        difference = price_difference(orjson.loads(response.data)["predictions"], checked.expected)
    except (urllib3.exceptions.HTTPError, KeyError, TypeError, ValueError) as error:
        difference = f"{type(error).__name__}: {error}"
    if difference:
        raise ServerError(
            f"{server.url} did not price the canary like the model in process "
            f"(status {getattr(response, 'status', None)}): {difference}"
        )


def price_difference(got: Any, expected: list[dict[str, Any]]) -> str | None:
    """The first difference between the records `got` and `expected` (numbers equal to a
    relative 1e-9), or None."""
    if not isinstance(got, list) or len(got) != len(expected):
        return f"{len(expected)} row(s) expected, got {str(got)[:200]}"
    for row, (answer, wanted) in enumerate(zip(got, expected, strict=True)):
        if not isinstance(answer, dict) or list(answer) != list(wanted):
            return f"row {row}: fields {list(wanted)} expected, got {str(answer)[:200]}"
        for field, value in wanted.items():
            if not _same(answer[field], value):
                return f"row {row}: {field} {answer[field]!r}, expected {value!r}"
    return None


def _same(got: Any, expected: Any) -> bool:
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(got, numbers):
        return math.isclose(got, expected, rel_tol=1e-9)
    return bool(got == expected)


def stop(servers: Sequence[Server], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each server's process group, SIGKILL what is still there after `grace`."""
    for sent, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT_SECONDS)):
        for server in servers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, sent)
        deadline = time.monotonic() + wait
        while any([alive(s.pid) for s in servers]) and time.monotonic() < deadline:
            time.sleep(0.1)
    if servers:
        logger.info("stopped model servers %s", ", ".join(s.url for s in servers))
