"""Test support for monitoring: a real Prometheus (Debian's `prometheus`) evaluating the
project's alerting rules, a real Alertmanager (Debian's `prometheus-alertmanager`), and
PromQL queries against them. Free ports, bounded waits, always stopped."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from config.settings import PROJECT_DIR
from tests.support.processes import free_port, running

PROMETHEUS = Path("/usr/bin/prometheus")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
INSTALL = "apt-get update && apt-get install -y prometheus prometheus-alertmanager"
RULES = PROJECT_DIR / "docker" / "prometheus" / "alerts.yml"
SCRAPE_SECONDS = 1


def _installed(binary: Path) -> str:
    if not binary.is_file():
        pytest.fail(f"{binary.name} is not installed ({binary} is missing): {INSTALL}")
    return str(binary)


@contextlib.contextmanager
def running_prometheus(
    workdir: Path, targets: dict[str, str], alertmanager: str | None = None
) -> Iterator[str]:
    """Prometheus scraping each job's target (host:port) and evaluating the alerting rules
    every second, sending alerts to `alertmanager` (host:port) if given; its URL."""
    config = workdir / "prometheus.yml"
    alerting = (
        f"alerting:\n  alertmanagers:\n    - static_configs:\n"
        f"        - targets: ['{alertmanager}']\n"
        if alertmanager
        else ""
    )
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  scrape_timeout: {SCRAPE_SECONDS}s\n"
        f"  evaluation_interval: {SCRAPE_SECONDS}s\n"
        f"rule_files: ['{RULES}']\n{alerting}"
        "scrape_configs:\n"
        + "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            for job, target in targets.items()
        )
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        _installed(PROMETHEUS),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(command, f"{url}/-/ready", workdir / "prometheus.log", timeout=30):
        yield url


@contextlib.contextmanager
def running_alertmanager(workdir: Path, config: Path) -> Iterator[str]:
    """Alertmanager with `config`, alone (no cluster); its host:port."""
    port = free_port()
    command = [
        _installed(ALERTMANAGER),
        f"--config.file={config}",
        f"--storage.path={workdir / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    ready = f"http://127.0.0.1:{port}/-/ready"
    with running(command, ready, workdir / "alertmanager.log", timeout=30):
        yield f"127.0.0.1:{port}"


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """The instant vector (or scalar) `expr` evaluates to now (or `at`, epoch seconds);
    fails on a PromQL error."""
    params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
    response = requests.get(f"{prometheus}/api/v1/query", params=params, timeout=5)
    answer = response.json()
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    result = answer["data"]["result"]
    return result if answer["data"]["resultType"] == "vector" else [{"value": result}]


def wait_for(prometheus: str, expr: str, timeout: float) -> None:
    """Wait until `expr` has a result (a filter such as `... == 3` holds)."""
    deadline = time.monotonic() + timeout
    while not query(prometheus, expr):
        assert time.monotonic() < deadline, f"still no result after {timeout:.0f} s: {expr}"
        time.sleep(SCRAPE_SECONDS / 4)
