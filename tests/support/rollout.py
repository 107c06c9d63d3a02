"""Test support for rollouts: a store with model versions to roll out, the real rollout
controller (`python -m serving.controller`) as a subprocess, and checks of a load's outcome."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyfunc.schema import example_listing
from serving.servers import alive
from tests.support.gateway import ALICE_KEY, Sent, Shot, read_log
from tests.support.processes import free_port, http_ok, stop_process_group, wait_until
from tests.support.stack import run_step

MODEL = "property-friends"
ONE_LISTING = Shot(
    "one-listing",
    json.dumps({"dataframe_records": [example_listing()]}).encode(),
    1,
    {"X-API-Key": ALICE_KEY},
)


def mlflow_client(env: dict[str, str]):
    """An MlflowClient on the store of `env`, as the MLflow UI would change it."""
    from mlflow import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def train_version(env: dict[str, str], cwd: Path, ingest_run_id: str) -> str:
    """Train the notebook preset on an ingest run's data; returns the new version."""
    result = run_step(
        "steps.train", "--ingest-run-id", ingest_run_id, "--preset", "notebook", env=env, cwd=cwd
    )
    return result.stdout.strip().rsplit(" ", 1)[-1]


def ingest(env: dict[str, str], cwd: Path, source: str) -> str:
    """Run the ingest step; returns its run id."""
    run_step("steps.ingest", "--source", source, env=env, cwd=cwd)
    runs = mlflow_client(env).search_runs(
        [e.experiment_id for e in mlflow_client(env).search_experiments()],
        filter_string="tags.step = 'ingest'",
        order_by=["start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id


@dataclass
class Controller:
    """The rollout controller on a store: started, killed, started again (it adopts)."""

    workdir: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def info_path(self) -> Path:
        return Path(self.env["MODEL_INFO_PATH"])

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CONTROLLER_METRICS_PORT']}/metrics"

    def start(self) -> None:
        with open(self.workdir / "controller.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving.controller"],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: self._running() and http_ok(self.metrics_url), 60, "rollout controller metrics"
        )

    def kill(self) -> None:
        """SIGKILL, as a crash: the servers it started keep running."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop_all(self) -> None:
        """Stop the controller and every server the served-model file lists."""
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None
        subprocess.run(
            [sys.executable, "-m", "serving.controller", "--stop"],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def served(self) -> dict[str, Any]:
        try:
            return json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_served(self, version: str, timeout: float = 240) -> dict[str, Any]:
        """Until the file names `version` and as many live servers as MODEL_SERVERS."""

        def done() -> bool:
            info = self.served()
            pids = info.get("pids") or {}
            return (
                info.get("version") == version
                and len(pids) == int(self.env["MODEL_SERVERS"])
                and all(alive(int(pid)) for pid in pids.values())
            )

        wait_until(done, timeout, f"version {version} served", interval=0.5)
        return self.served()

    def rollouts(self, result: str) -> float:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "model_rollouts_total" and s.labels.get("result") == result
        )

    def log(self) -> str:
        return (self.workdir / "controller.log").read_text()

    def _running(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the controller exited: {self.log()[-3000:]}")
        return True


@contextlib.contextmanager
def running_controller(workdir: Path, env: dict[str, str]) -> Iterator[Controller]:
    """The controller with its own metrics port and state; everything stopped at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **env,
        "CONTROLLER_METRICS_PORT": str(free_port()),
        "MODEL_INFO_PATH": str(workdir / "served-model.json"),
        "STATE_DIR": str(workdir),
    }
    controller = Controller(workdir, env)
    try:
        controller.start()
        yield controller
    finally:
        controller.stop_all()


def logged_once(request_log: Path, sent: list[Sent], timeout: float = 15) -> list[dict]:
    """The request log's /invocations lines once every sent request is in it (bounded)."""
    wanted = Counter(s.request_id for s in sent)
    lines: list[dict] = []

    def complete() -> bool:
        nonlocal lines
        lines = [line for line in read_log(request_log) if line["path"] == "/invocations"]
        return wanted <= Counter(line["request_id"] for line in lines)

    with contextlib.suppress(TimeoutError):
        wait_until(complete, timeout, "request log", interval=0.3)
    time.sleep(0.5)
    return [line for line in read_log(request_log) if line["path"] == "/invocations"]
