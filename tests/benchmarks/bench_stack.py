"""What the benchmark starts: the pipeline (`mlflow run . -e main`, timed), the model server and
the gateway on free loopback ports, all against a throw-away store; and what they cost
(RSS and CPU time of every process of each process group, read from `ps` and /proc)."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.settings import PROJECT_DIR
from serving.servers import server_env
from tests.support.gateway import ALICE_KEY, RunningGateway, running_gateway
from tests.support.processes import VENV_BIN, free_port, running, stop_process_group
from tests.support.stack import ModelServer, store_env

logger = logging.getLogger(__name__)

MODEL_NAME = "property-friends"
MODEL_URI = f"models:/{MODEL_NAME}@champion"
API_KEY = ALICE_KEY
PIPELINE_TIMEOUT_SECONDS = 1800
# Variables of the caller's shell (`make` exports some) that must not reach the started stack.
_NOT_INHERITED = (
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_REGISTRY_URI",
    "MODEL_PORT",
    "GATEWAY_PORT",
    "GATEWAY_API_KEYS",
    "GATEWAY_UPSTREAM_URL",
    "GATEWAY_REQUEST_LOG",
    "PROMETHEUS_MULTIPROC_DIR",
)


def bench_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """Environment of everything the benchmark starts: all state under `workdir`."""
    env = store_env(
        workdir,
        MODEL_NAME=MODEL_NAME,
        MODEL_ALIAS="champion",
        MODEL_URI=MODEL_URI,
        MODEL_INFO_PATH=str(workdir / "state" / "served-model.json"),
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        **overrides,
    )
    env["MLFLOW_EXPERIMENT_NAME"] = "bench"
    for name in _NOT_INHERITED:
        if name not in overrides:
            env.pop(name, None)
    return env


@dataclass(frozen=True)
class PipelineRun:
    command: list[str]
    wall_seconds: float
    peak_rss_mb: float  # the largest process of the run (ru_maxrss of the waited children)
    output_tail: str


def run_pipeline(env: dict[str, str], source: str, preset: str, log_path: Path) -> PipelineRun:
    """`mlflow run . -e main --env-manager local` in the project, timed; fails with its log."""
    command = [
        str(VENV_BIN / "mlflow"),
        "run",
        ".",
        "-e",
        "main",
        "--env-manager",
        "local",
        "-P",
        f"source={source}",
    ]
    if preset:
        command += ["-P", f"preset={preset}"]
    logger.info("pipeline: %s", " ".join(command))
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=PIPELINE_TIMEOUT_SECONDS)
        finally:
            stop_process_group(process)
        wall = time.perf_counter() - started
    tail = log_path.read_text(errors="replace")[-3000:]
    if code != 0:
        raise RuntimeError(f"the pipeline failed ({code}); end of {log_path}:\n{tail}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return PipelineRun(command, wall, peak_kb / 1024, tail)


def has_champion(env: dict[str, str]) -> bool:
    """Whether the store of `env` already has a champion (a kept --store)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = env["MLFLOW_TRACKING_URI"]
    try:
        MlflowClient(uri, uri).get_model_version_by_alias(MODEL_NAME, "champion")
    except MlflowException:
        return False
    return True


@contextlib.contextmanager
def model_server(workdir: Path, env: dict[str, str], timeout: float = 180) -> Iterator[ModelServer]:
    """`python -m serving.serve` on a free port until the block ends."""
    server = ModelServer(workdir, env)
    try:
        server.start(timeout=timeout)
        yield server
    finally:
        if server.process is not None:
            stop_process_group(server.process)


@contextlib.contextmanager
def gateway(
    workdir: Path, upstream_url: str, workers: int, env: dict[str, str]
) -> Iterator[RunningGateway]:
    """gunicorn with the gateway's configuration on a free port until the block ends."""
    state = workdir / "gateway"
    state.mkdir(parents=True, exist_ok=True)
    passed = {k: v for k, v in env.items() if k.startswith(("GATEWAY_", "OMP_", "MALLOC_"))}
    with running_gateway(
        state,
        upstream_url,
        info_path=workdir / "state" / "served-model.json",
        workers=workers,
        extra_env=passed,
    ) as running:
        yield running


@dataclass(frozen=True)
class Baseline:
    """The one-hop baseline app (`baseline_app`) started by `baseline`."""

    port: int
    pid: int


@contextlib.contextmanager
def baseline(workdir: Path, env: dict[str, str], timeout: float = 180) -> Iterator[Baseline]:
    """uvicorn (1 worker) serving `baseline_app` on a free port until the block ends, with the
    model server's environment (one OpenMP thread, the same model URI)."""
    port = free_port()
    command = [
        str(VENV_BIN / "uvicorn"),
        "tests.benchmarks.baseline_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    started = server_env({**env, "BASELINE_MODEL_URI": MODEL_URI})
    started["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH")]))
    url = f"http://127.0.0.1:{port}/ping"
    log = workdir / "baseline.log"
    with running(command, url, log, env=started, timeout=timeout) as process:
        yield Baseline(port, process.pid)


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    rss_mb: float
    command: str


def process_group(leader: int) -> list[Process]:
    """Every live process of the process group led by `leader` (the servers start sessions)."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,pgid=,rss=,args="], capture_output=True, text=True, check=True
    ).stdout
    found = []
    for line in out.splitlines():
        pid, ppid, pgid, rss, args = line.split(None, 4)
        if int(pgid) == leader:
            found.append(Process(int(pid), int(ppid), int(rss) / 1024, args))
    return found


def describe(process: Process, leader: int, group: list[Process]) -> str:
    """A readable role for a process of the model server's or the gateway's group."""
    args, parents = process.command, {p.ppid for p in group}
    if "baseline_app" in args:
        return "uvicorn (one-hop baseline)"
    if "gunicorn" in args:
        return "gunicorn master" if process.pid == leader else "gunicorn worker"
    if process.pid == leader:
        return "mlflow models serve (launcher)"
    if "uvicorn" in args:
        return "uvicorn supervisor" if process.pid in parents else "uvicorn (scoring server)"
    if "multiprocessing" in args:
        return "uvicorn worker (scoring server)"
    return args[:60]


def rss_report(groups: dict[str, int]) -> list[dict[str, object]]:
    """RSS of every process of each named group, e.g. {"model server": pid, "gateway": pid}."""
    rows = []
    for name, leader in groups.items():
        members = process_group(leader)
        for process in members:
            rows.append(
                {
                    "group": name,
                    "role": describe(process, leader, members),
                    "pid": process.pid,
                    "rss_mb": round(process.rss_mb, 1),
                    "command": process.command[:200],
                }
            )
    return rows


class CpuMeter:
    """CPU time (user + system) used so far by the processes of each group, read from /proc.

    The processes are listed once, when the meter is made (the servers are up by then)."""

    def __init__(self, groups: dict[str, int]):
        self._pids = {
            name: [p.pid for p in process_group(leader)] for name, leader in groups.items()
        }
        self._tick = os.sysconf("SC_CLK_TCK")

    def __call__(self) -> dict[str, float]:
        return {name: sum(self._seconds(pid) for pid in pids) for name, pids in self._pids.items()}

    def _seconds(self, pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone
            return 0.0
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime
