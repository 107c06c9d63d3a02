"""One model server's footprint: RSS of the launcher and the scorer, artifact size, cold start.

    python -m tests.benchmarks.bench_memory [--store DIR] [--source SPEC] [--starts N]

Trains and registers the default preset on client-sized `realistic` data in a throw-away
tracking store (sqlite; kept and reused with `--store`), evaluates it (test MAE), then starts
`mlflow models serve -m <version> --env-manager local --workers 1` on a free loopback port
`--starts` times and measures, each time: seconds from the start to the first priced answer
(POST /invocations with one listing), and the RSS (VmRSS) of the launcher and of its uvicorn
child after that answer and after a batch of 1,000 listings. Prints a table, returns a dict.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from pyfunc.schema import FEATURE_NAMES, example_listing
from tests.support.processes import free_port, stop_process_group
from tests.support.stack import run_step, store_env

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]
CLIENT_REALISTIC = "synthetic:variant=realistic"  # 16,212 training and 6,949 test rows
MODEL_NAME = "lean-bench"
START_TIMEOUT_SECONDS = 300
BATCH_ROWS = 1_000


def bench_env(workdir: Path) -> dict[str, str]:
    """The store under `workdir`; one OpenMP thread, as the model servers run."""
    env = store_env(workdir, MODEL_NAME=MODEL_NAME, OMP_NUM_THREADS="1")
    env["MLFLOW_EXPERIMENT_NAME"] = "bench-memory"
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_REGISTRY_URI", "MODEL_URI"):
        env.pop(name, None)
    return env


def trained_version(workdir: Path, env: dict[str, str], source: str) -> dict[str, Any]:
    """The newest registered version of the store, trained and evaluated first if none."""
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])
    client = mlflow.MlflowClient()
    if not client.search_model_versions(f"name = '{MODEL_NAME}'"):
        started = time.perf_counter()
        run_step("steps.train", "--source", source, env=env, cwd=workdir, timeout=3600)
        train_seconds = time.perf_counter() - started
        run_step("steps.evaluate", env=env, cwd=workdir, timeout=1800)
        logger.info("trained and evaluated in %.0f s", time.perf_counter() - started)
    else:
        train_seconds = None
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    newest = max(versions, key=lambda v: int(v.version))
    return {
        "uri": f"models:/{MODEL_NAME}/{newest.version}",
        "test_mae": float(newest.tags["test_mae"]) if "test_mae" in newest.tags else None,
        "train_seconds": train_seconds,
        "artifact_mb": artifact_mb(f"models:/{MODEL_NAME}/{newest.version}"),
    }


def artifact_mb(uri: str) -> dict[str, float]:
    """MB on disk of the model's files: all of them, and each file of its artifacts/ folder."""
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(download_artifacts(uri, dst_path=tmp))
        files = [p for p in local.rglob("*") if p.is_file()]
        sizes = {str(p.relative_to(local)): p.stat().st_size / 2**20 for p in files}
    largest = {k: round(v, 1) for k, v in sizes.items() if k.startswith("artifacts/")}
    return {"total": round(sum(sizes.values()), 1), **largest}


def rss_mb(pid: int, field: str = "Rss", table: str = "smaps_rollup") -> float:
    """A field of /proc/<pid>/smaps_rollup in MB: Rss (VmRSS) or Pss (shared pages split
    between the processes that map them: what the process costs the machine)."""
    for line in Path(f"/proc/{pid}/{table}").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def footprint(launcher: int, scorers: list[int]) -> dict[str, float]:
    return {
        "launcher": rss_mb(launcher),
        "scorer": sum(rss_mb(p) for p in scorers),
        "pss": rss_mb(launcher, "Pss") + sum(rss_mb(p, "Pss") for p in scorers),
    }


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), read from /proc."""
    try:
        found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [d for child in found for d in descendants(child)]


def post(url: str, body: dict, timeout: float = 30) -> list[dict] | None:
    """The predictions, or None if the server does not answer (yet)."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


@contextmanager
def model_server(
    uri: str, env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`mlflow models serve` on a free port, in a session of its own, stopped on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    command += ["--env-manager", "local", "--workers", "1", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process, f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_process_group(process)


def one_start(uri: str, env: dict[str, str], log: Path, batch: list[dict]) -> dict[str, Any]:
    """Seconds to the first priced answer, then the RSS of the launcher and of the scorer."""
    one = {"dataframe_records": [example_listing()]}
    started, scorer_started = time.perf_counter(), None
    with model_server(uri, env, log) as (process, url):
        while (answer := post(url, one)) is None:
            if scorer_started is None and descendants(process.pid):
                scorer_started = time.perf_counter() - started
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited: {log.read_text()[-3000:]}")
            if time.perf_counter() - started > START_TIMEOUT_SECONDS:
                raise TimeoutError(f"no answer after {START_TIMEOUT_SECONDS} s")
            time.sleep(0.05)
        cold_start = time.perf_counter() - started
        scorers = descendants(process.pid)
        first = footprint(process.pid, scorers)
        priced = post(url, {"dataframe_records": batch}, timeout=120)
        after = footprint(process.pid, scorers)
    if priced is None or len(priced) != len(batch):
        raise RuntimeError(f"the batch of {len(batch)} was not priced: {log.read_text()[-3000:]}")
    return {
        "cold_start_seconds": cold_start,
        "launcher_seconds": scorer_started,  # until the launcher started the scorer
        "price": answer[0]["price"],
        "rss_mb_first_answer": first,
        "rss_mb_after_batch": after,
    }


def listings(rows: int) -> list[dict]:
    from steps.generate import generate_listings

    frame = generate_listings(rows, seed=7, dirty=False)[list(FEATURE_NAMES)]
    return frame.head(rows).to_dict("records")


def measure(workdir: Path, source: str = CLIENT_REALISTIC, starts: int = 3) -> dict[str, Any]:
    """Train (unless the store has a version), then start one model server `starts` times."""
    env = bench_env(workdir)
    model = trained_version(workdir, env, source)
    batch = listings(BATCH_ROWS)
    log = workdir / "model-server.log"
    runs = [one_start(model["uri"], env, log, batch) for _ in range(starts)]
    peak = {
        role: max(max(r["rss_mb_first_answer"][role], r["rss_mb_after_batch"][role]) for r in runs)
        for role in ("launcher", "scorer", "pss")
    }
    return {
        **model,
        "cold_start_seconds": statistics.median(r["cold_start_seconds"] for r in runs),
        "cold_starts": [round(r["cold_start_seconds"], 2) for r in runs],
        "launcher_seconds": statistics.median(r["launcher_seconds"] or 0.0 for r in runs),
        "rss_mb": {**peak, "server": peak["launcher"] + peak["scorer"]},
        "runs": runs,
        "load_average": os.getloadavg()[0],
    }


def render(result: dict[str, Any]) -> str:
    rss, artifact = result["rss_mb"], result["artifact_mb"]
    mae = result["test_mae"]
    rows = [
        ("model", result["uri"]),
        ("launcher RSS (MB)", f"{rss['launcher']:.0f}"),
        ("scorer RSS (MB)", f"{rss['scorer']:.0f}"),
        ("model server RSS (MB)", f"{rss['server']:.0f}"),
        ("model server PSS (MB)", f"{rss['pss']:.0f}"),
        ("artifact (MB)", f"{artifact['total']:.1f}"),
        *[(f"  {name}", f"{mb:.1f}") for name, mb in artifact.items() if name != "total"],
        ("cold start, median (s)", f"{result['cold_start_seconds']:.1f}  {result['cold_starts']}"),
        ("  launcher, until the scorer starts (s)", f"{result['launcher_seconds']:.1f}"),
        ("test MAE (UF)", "-" if mae is None else f"{mae:,.1f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


@click.command()
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the tracking store here; its newest version is measured, trained if none.",
)
@click.option("--source", default=CLIENT_REALISTIC, show_default=True, help="Data to train on.")
@click.option("--starts", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def main(store: Path | None, source: str, starts: int, output: Path | None) -> None:
    """Print one model server's RSS, artifact size, cold start and test MAE."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workdir = store.resolve() if store else Path(tempfile.mkdtemp(prefix="bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(workdir, source, starts)
    finally:
        if store is None:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(render(result))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
