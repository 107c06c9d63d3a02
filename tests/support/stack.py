"""The real pipeline and model server, run as subprocesses against a throw-away tracking store."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import (
    free_port,
    http_ok,
    stop_process_group,
    subprocess_env,
    wait_until,
)

SMALL_SOURCE = "synthetic:train_rows=2000,test_rows=600"


def store_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """Environment for project commands that keep all their state under `workdir`."""
    return subprocess_env(
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        STATE_DIR=str(workdir / "state"),
        MLFLOW_EXPERIMENT_NAME="tests",
        **overrides,
    )


def run_step(
    module: str,
    *args: str,
    env: dict[str, str],
    cwd: Path,
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...`; with `check`, fail with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@dataclass
class ModelServer:
    """`python -m serving.serve` (MLflow's scoring server) on a free port; stop(), start() again."""

    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def info_path(self) -> Path:
        return self.workdir / "state" / "served-model.json"

    def start(self, timeout: float = 90) -> None:
        env = {**self.env, "MODEL_PORT": str(self.port)}
        log = open(self.workdir / f"model-server-{self.port}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.serve"],
            env=env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"model server exited with {self.process.returncode}: {self.log_tail()}"
                )
            return http_ok(f"{self.url}/ping")

        wait_until(ready, timeout, f"model server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None
        wait_until(lambda: not http_ok(f"{self.url}/ping"), 10, "model server shutdown")

    def log_tail(self) -> str:
        logs = sorted(self.workdir.glob("model-server-*.log"))
        return logs[-1].read_text()[-3000:] if logs else ""
