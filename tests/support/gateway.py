"""Test support for the gateway: settings for an in-process app, and a real gunicorn gateway
on a free port that is always stopped (process group) when the block ends."""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyfunc.settings import PROJECT_DIR, Settings
from tests.support.processes import VENV_BIN, free_port, running, subprocess_env

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-fedcba9876543210"
API_KEYS = f"alice:{ALICE_KEY},bob:sha256:{hashlib.sha256(BOB_KEY.encode()).hexdigest()}"
GUNICORN_CONF = PROJECT_DIR / "gateway" / "gunicorn.conf.py"


def gateway_env(state_dir: Path, **overrides: str) -> dict[str, str]:
    """Environment variables of a gateway whose files all live under `state_dir`."""
    env = {
        "STATE_DIR": str(state_dir),
        "GATEWAY_API_KEYS": API_KEYS,
        "GATEWAY_REQUEST_LOG": str(state_dir / "requests.jsonl"),
        "MODEL_INFO_PATH": str(state_dir / "served-model.json"),
        "GATEWAY_UPSTREAM_URL": f"http://127.0.0.1:{free_port()}",
    }
    env.update(overrides)
    return env


def gateway_settings(state_dir: Path, **overrides: str) -> Settings:
    """Settings of an in-process test app (see `gateway_env`)."""
    return Settings.from_env(gateway_env(state_dir, **overrides))


def write_model_info(path: Path, version: str = "3", **fields: Any) -> dict[str, Any]:
    """Write a served-model file like the launcher does; returns its content."""
    info = {"name": "property-friends", "version": version, "alias": "champion",
            "uri": f"models:/property-friends/{version}", "run_id": "abc123",
            "metrics": {"test_mae": 1800.0, "test_rmse": 3500.0, "test_mape": 0.12,
                        "test_r2": 0.91},
            "served_since": "2025-01-01T00:00:00Z", **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every line of a request log, parsed."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass(frozen=True)
class RunningGateway:
    """A gunicorn gateway started by `running_gateway`."""

    url: str
    port: int
    pid: int
    state_dir: Path
    request_log: Path

    def worker_pids(self) -> list[int]:
        """The pids of the master's children (the workers)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(p) for p in children]

    def metrics_text(self) -> str:
        """The text of GET /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()


@contextlib.contextmanager
def running_gateway(
    state_dir: Path,
    upstream_url: str,
    info_path: Path | None = None,
    workers: int = 2,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RunningGateway]:
    """gunicorn with the gateway's config on a free port; stopped when the block ends."""
    port = free_port()
    overrides = {"GATEWAY_PORT": str(port), "GATEWAY_UPSTREAM_URL": upstream_url,
                 "GATEWAY_WORKERS": str(workers), **(extra_env or {})}
    if info_path is not None:
        overrides["MODEL_INFO_PATH"] = str(info_path)
    env = subprocess_env(**gateway_env(state_dir, **overrides))
    command = [str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "gateway.app:create_app()"]
    url = f"http://127.0.0.1:{port}"
    with running(command, f"{url}/health", state_dir / "gunicorn.log", env=env,
                 timeout=30) as process:
        yield RunningGateway(url, port, process.pid, state_dir, Path(env["GATEWAY_REQUEST_LOG"]))
