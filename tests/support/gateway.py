"""Test support for the gateway: settings for an in-process app, and a real gunicorn gateway
on a free port that is always stopped (process group) when the block ends."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from config.settings import PROJECT_DIR, Settings
from tests.support.processes import (
    VENV_BIN,
    children,
    free_port,
    running,
    subprocess_env,
    wait_for_children,
)

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
    info = {
        "name": "property-friends",
        "version": version,
        "alias": "champion",
        "uri": f"models:/property-friends/{version}",
        "run_id": "abc123",
        "metrics": {"test_mae": 1800.0, "test_rmse": 3500.0, "test_mape": 0.12, "test_r2": 0.91},
        "served_since": "2025-01-01T00:00:00Z",
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))
    return info


def sha256_hex(key: str) -> str:
    """The digest a keys entry gives as `sha256`."""
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys_file(path: Path, *entries: Mapping[str, Any]) -> None:
    """Replace a GATEWAY_API_KEYS_FILE atomically (a new inode), as a mounted secret changes."""
    staged = path.with_name(path.name + ".new")
    staged.write_text("# keys\n\n" + "".join(json.dumps(entry) + "\n" for entry in entries))
    os.replace(staged, path)


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
        return children(self.pid)

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
    overrides = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_UPSTREAM_URL": upstream_url,
        "GATEWAY_WORKERS": str(workers),
        **(extra_env or {}),
    }
    if info_path is not None:
        overrides["MODEL_INFO_PATH"] = str(info_path)
    env = subprocess_env(**gateway_env(state_dir, **overrides))
    command = [str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "gateway.app:create_app()"]
    url = f"http://127.0.0.1:{port}"
    with running(
        command, f"{url}/health", state_dir / "gunicorn.log", env=env, timeout=30
    ) as process:
        gateway = RunningGateway(
            url, port, process.pid, state_dir, Path(env["GATEWAY_REQUEST_LOG"])
        )
        wait_for_children(process.pid, workers)
        yield gateway


def per_worker(gateway: RunningGateway, name: str, **labels: str) -> dict[int, float]:
    """The value of counter sample `name` with exactly `labels` in each worker (by pid), read
    from the workers' multiprocess files."""
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = gateway.state_dir / f"prometheus-gateway-{gateway.port}"
    values = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        values[pid] = sum(
            sample.value
            for family in MultiProcessCollector.merge([str(path)])
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        )
    return values


def metric_samples(gateway: RunningGateway) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics, keyed by (sample name, frozenset of its label items)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(gateway.metrics_text())
        for sample in family.samples
    }


def metric_sum(samples: Mapping[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(
        value for (sample, items), value in samples.items() if sample == name and wanted <= items
    )


@contextlib.contextmanager
def fake_upstream(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in model server on a free port, one thread per connection; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-upstream", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class Shot:
    """One kind of request a load client sends: its body, extra headers and row count."""

    kind: str
    body: bytes
    rows: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Sent:
    """What one request of a load got; status 0 when no HTTP answer came back."""

    request_id: str
    kind: str
    started: float
    ended: float
    status: int
    error_code: str | None
    rows: int
    model_version: str | None = None


class LoadClients:
    """`clients` threads, each with its own keep-alive session, sending `shots` in turn to
    POST /invocations until `stop()`, or until `max_requests` were sent in all. Every request
    carries a unique X-Request-ID (`prefix`-client-n); `sent` lists the outcomes."""

    def __init__(
        self,
        url: str,
        shots: list[Shot],
        clients: int,
        prefix: str = "load",
        pause: float = 0.0,
        max_requests: int | None = None,
    ):
        self.url = url
        self.shots = shots
        self.prefix = prefix
        self.pause = pause
        self.max_requests = max_requests
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(clients)
        ]

    def start(self) -> LoadClients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 60) -> list[Sent]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return self.sent

    def _run(self, client: int) -> None:
        with requests.Session() as session:
            n = 0
            while not self._stop.is_set():
                with self._lock:
                    if self.max_requests is not None and len(self.sent) >= self.max_requests:
                        return
                shot = self.shots[(n + client) % len(self.shots)]
                request_id = f"{self.prefix}-{client}-{n}"
                headers = {
                    "Content-Type": "application/json",
                    "X-Request-ID": request_id,
                    **shot.headers,
                }
                started = time.monotonic()
                version = None
                try:
                    response = session.post(
                        f"{self.url}/invocations", data=shot.body, headers=headers, timeout=30
                    )
                    status = response.status_code
                    version = response.headers.get("X-Model-Version")
                    code = response.json().get("error_code") if status != 200 else None
                except (requests.RequestException, ValueError) as error:
                    status, code = 0, repr(error)
                with self._lock:
                    self.sent.append(
                        Sent(
                            request_id,
                            shot.kind,
                            started,
                            time.monotonic(),
                            status,
                            code,
                            shot.rows,
                            version,
                        )
                    )
                n += 1
                if self.pause:
                    time.sleep(self.pause)
