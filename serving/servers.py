"""Model server processes of the pool: start, probe, stop.

Each server is one single-worker MLflow scoring server (uvicorn) on the local copy of a version,
started in a session of its own: it outlives the controller that started it (a restarted
controller adopts it by pid) and is stopped as a process group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import urllib3
from mlflow.models import convert_input_example_to_serving_input
from mlflow.pyfunc import PyFuncModel

from config.settings import Settings
from serving.serve import serve_command

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = urllib3.Timeout(connect=1.0, read=10.0)
STOP_GRACE_SECONDS = 10.0
KILL_WAIT_SECONDS = 2.0
SCORING_APP = b"mlflow.pyfunc.scoring_server.app:app"  # uvicorn's argument: the scoring server
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
    """The request every new server must price, and the prices the version gives it."""

    body: bytes
    expected: pd.DataFrame


def canary(model: PyFuncModel) -> Canary:
    """The canary of a loaded model: its input example, priced here."""
    example = model.input_example
    body = convert_input_example_to_serving_input(example)
    if body is None:
        raise ServerError("the model has no input example to price as the canary")
    return Canary(body.encode(), model.predict(example))


def start(settings: Settings, model_path: Path, host: str, public_host: str) -> Server:
    """Start one single-worker server on the local copy `model_path` on a free port; returns
    without waiting."""
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
    return SCORING_APP in command


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
        got = pd.DataFrame(orjson.loads(response.data)["predictions"])  # ValueError: not JSON
        expected = checked.expected.reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, rtol=1e-9)
    except (urllib3.exceptions.HTTPError, KeyError, TypeError, ValueError, AssertionError) as error:
        raise ServerError(
            f"{server.url} did not price the canary like the model in process "
            f"(status {getattr(response, 'status', None)}): {error}"
        ) from None


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
