"""One model server's footprint, as the pool starts it and in the old layout, in one run.

    python -m tests.benchmarks.bench_memory [--store DIR] [--source SPEC] [--starts N]

Trains and registers the default preset on client-sized `realistic` data in a throw-away
tracking store (sqlite; kept and reused with `--store`), evaluates it (test MAE), then starts
one model server on that version `--starts` times in each of two layouts, one after the other:
as the rollout controller's pool starts it (`serving.servers.start`: MLflow's scoring server
alone, on the controller's local copy) and as today's layout before it: plain `mlflow models
serve -m <version> --env-manager local --workers 1` on the same model files without their
compiled form (the scorer reads the scikit-learn pipeline and compiles it). Each start measures
the seconds from the start to the first priced answer (POST /invocations with one listing) and
the RSS (VmRSS) of the started process and of every process below it, whatever they run, after
that answer and after a batch of 1,000 listings. Then the rollout controller
(`python -m serving.controller`, MODEL_SERVERS=1) idle: its own RSS (not its servers', they
run in sessions of their own) 10 s after its pool serves. `make bench` runs the same
(`measure_version`) on its champion. Prints a table, returns a dict.
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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import click
import yaml

from config.settings import Settings
from pyfunc.model import COMPILED_ARTIFACT
from pyfunc.schema import FEATURE_NAMES
from serving import servers
from serving.checks import local_copy
from serving.servers import server_env
from tests.support.processes import free_port, stop_process_group, wait_until
from tests.support.rollout import running_controller
from tests.support.stack import run_step, store_env

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[2]
CLIENT_REALISTIC = "synthetic:variant=realistic"  # 16,212 training and 6,949 test rows
MODEL_NAME = "lean-bench"
START_TIMEOUT_SECONDS = 300
BATCH_ROWS = 1_000
CONTROLLER_IDLE_SECONDS = 10.0
POOL, OLD_LAYOUT = "pool", "old_layout"

Started = AbstractContextManager[tuple[int, str]]  # a started server: its pid and POST URL


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


def rss_mb(pid: int, field: str = "Rss") -> float:
    """A field of /proc/<pid>/smaps_rollup in MB: Rss (VmRSS) or Pss (shared pages split
    between the processes that map them: what the process costs the machine); 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren, ...), read from /proc."""
    try:
        found = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [d for child in found for d in descendants(child)]


def role(pid: int) -> str:
    """What the process runs, from its command line: `mlflow models serve` (the launcher),
    uvicorn (the scorer), else its first words."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    args = [a for a in args if a]
    if "models" in args and "serve" in args:
        return "mlflow models serve"
    if any("uvicorn" in a for a in args):
        return "uvicorn (scoring server)"
    return " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args[:3]))[:60]


def footprint(pid: int) -> dict[str, Any]:
    """RSS and PSS (MB) of `pid` and of every process below it, each labelled by its command."""
    found: list[dict[str, Any]] = [
        {
            "pid": p,
            "role": role(p),
            "rss_mb": round(rss_mb(p), 1),
            "pss_mb": round(rss_mb(p, "Pss"), 1),
        }
        for p in [pid, *descendants(pid)]
    ]
    return {
        "processes": found,
        "total": round(sum(p["rss_mb"] for p in found), 1),
        "pss": round(sum(p["pss_mb"] for p in found), 1),
    }


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
def old_layout(uri: str, env: dict[str, str], log: Path) -> Iterator[tuple[int, str]]:
    """The old layout: plain `mlflow models serve` on a free port, in a session of its own,
    stopped on the way out."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    command += ["--env-manager", "local", "--workers", "1", "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            env=server_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process.pid, f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_process_group(process)


@contextmanager
def pool_server(uri: str, env: dict[str, str]) -> Iterator[tuple[int, str]]:
    """One model server as the controller's pool starts it (`serving.servers.start`, which
    passes this process's environment on: `env` for the time of the start) on the version's
    local copy (downloaded once, by the first start, as the controller does once per
    version), stopped at the end."""
    name, version = uri.removeprefix("models:/").rsplit("/", 1)
    with mock.patch.dict(os.environ, env, clear=True):
        settings = Settings.from_env(env)
        path = local_copy({"name": name, "version": version, "uri": uri}, settings)
        server = servers.start(settings, path, "127.0.0.1", "127.0.0.1")
    try:
        yield server.pid, f"{server.url}/invocations"
    finally:
        servers.stop([server])


def one_start(start: Started, batch: list[dict], what: str) -> dict[str, Any]:
    """Seconds from `start` to the first priced answer, then the footprint of the started
    process and its descendants after that answer and after `batch`."""
    started = time.perf_counter()
    with start as (pid, url):
        while (answer := post(url, {"dataframe_records": batch[:1]})) is None:
            if not servers.alive(pid):
                raise RuntimeError(f"{what}: the model server (pid {pid}) exited; see its log")
            if time.perf_counter() - started > START_TIMEOUT_SECONDS:
                raise TimeoutError(f"{what}: no priced answer after {START_TIMEOUT_SECONDS} s")
            time.sleep(0.05)
        cold_start = time.perf_counter() - started
        first = footprint(pid)
        priced = post(url, {"dataframe_records": batch}, timeout=120)
        after = footprint(pid)
    if priced is None or len(priced) != len(batch):
        raise RuntimeError(f"{what}: the batch of {len(batch)} was not priced")
    return {
        "cold_start_seconds": cold_start,
        "price": answer[0]["price"],
        "rss_mb_first_answer": first,
        "rss_mb_after_batch": after,
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median cold start and the largest footprint seen over `runs`."""
    seen = [r[k] for r in runs for k in ("rss_mb_first_answer", "rss_mb_after_batch")]
    return {
        "cold_start_seconds": statistics.median(r["cold_start_seconds"] for r in runs),
        "cold_starts": [round(r["cold_start_seconds"], 2) for r in runs],
        "rss_mb": max(seen, key=lambda f: f["total"]),
        "runs": runs,
    }


def todays_version(uri: str, env: dict[str, str], workdir: Path) -> str:
    """A version of the same model files without their compiled form, as versions were logged
    before it: its scorer reads the scikit-learn pipeline and compiles it at start (the same
    fitted pipeline, the same prices). Registered once, from a folder under `workdir`."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    folder = workdir / "todays-layout-model"
    if not (folder / "MLmodel").exists():
        download_artifacts(artifact_uri=uri, dst_path=str(folder))
        shutil.rmtree(folder / "artifacts" / COMPILED_ARTIFACT)
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
        del mlmodel["flavors"]["python_function"]["artifacts"][COMPILED_ARTIFACT]
        (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
        client = MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
        name = uri.removeprefix("models:/").rsplit("/", 1)[0]
        version = client.create_model_version(name, str(folder.resolve()), tags={"layout": "today"})
        (folder / "version").write_text(str(version.version))
    name = uri.removeprefix("models:/").rsplit("/", 1)[0]
    return f"models:/{name}/{(folder / 'version').read_text()}"


def layouts(
    uri: str, env: dict[str, str], workdir: Path, batch: list[dict], starts: int
) -> dict[str, Any]:
    """`starts` starts of each layout after one untimed start (the page cache then holds the
    code and the model for both), in alternating order, so that neither always goes first and
    a slower minute falls on both. The old layout is today's: `mlflow models serve` on the
    version without its compiled form."""
    log = workdir / "old-layout-model-server.log"
    today = todays_version(uri, env, workdir)
    starters: dict[str, Callable[[], Started]] = {
        POOL: lambda: pool_server(uri, env),
        OLD_LAYOUT: lambda: old_layout(today, env, log),
    }
    one_start(starters[OLD_LAYOUT](), batch, "untimed start")
    runs: dict[str, list[dict[str, Any]]] = {POOL: [], OLD_LAYOUT: []}
    for n in range(starts):
        order = (POOL, OLD_LAYOUT) if n % 2 == 0 else (OLD_LAYOUT, POOL)
        logger.info("cold start %d/%d: %s, then %s", n + 1, starts, *order)
        for name in order:
            runs[name].append(one_start(starters[name](), batch, name))
    return {name: summary(found) for name, found in runs.items()}


def controller_idle(
    workdir: Path, env: dict[str, str], uri: str, idle: float = CONTROLLER_IDLE_SECONDS
) -> dict[str, Any]:
    """The rollout controller's own VmRSS (MB) `idle` seconds after its pool of one serves `uri`
    (its servers run in sessions of their own: not counted)."""
    env = {**env, "MODEL_URI": uri, "MODEL_SERVERS": "1"}
    with running_controller(workdir, env) as controller:
        wait_until(
            lambda: bool(controller.served().get("servers")),
            START_TIMEOUT_SECONDS,
            "the controller's pool",
        )
        time.sleep(idle)
        assert controller.process is not None  # started by running_controller
        pid = controller.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_mb": rss / 1024, "idle_seconds": idle, "pid": pid}


def measure_version(
    workdir: Path,
    env: dict[str, str],
    uri: str,
    batch: list[dict],
    starts: int,
    controller: bool = True,
) -> dict[str, Any]:
    """Both layouts of one model server on `uri`, the artifact's size and the controller idle."""
    workdir.mkdir(parents=True, exist_ok=True)
    found = layouts(uri, env, workdir, batch, starts)
    found["cold_start_ratio"] = (
        found[POOL]["cold_start_seconds"] / found[OLD_LAYOUT]["cold_start_seconds"]
    )
    found["artifact_mb"] = artifact_mb(uri)
    if controller:
        logger.info("the rollout controller with a pool of one, idle")
        found["controller"] = controller_idle(workdir / "controller", env, uri)
    return {"uri": uri, **found, "load_average": os.getloadavg()[0]}


def listings(rows: int) -> list[dict]:
    from steps.generate import generate_listings

    frame = generate_listings(rows, seed=7, dirty=False)[list(FEATURE_NAMES)]
    return frame.head(rows).to_dict("records")


def measure(workdir: Path, source: str = CLIENT_REALISTIC, starts: int = 3) -> dict[str, Any]:
    """Train (unless the store has a version), then measure its newest version."""
    env = bench_env(workdir)
    model = trained_version(workdir, env, source)
    found = measure_version(workdir, env, model["uri"], listings(BATCH_ROWS), starts)
    return {**model, **found}


def render(result: dict[str, Any]) -> list[str]:
    """Both layouts side by side (RSS of each process, cold starts), the artifact's files, the
    controller's idle RSS."""
    new, old = result[POOL], result[OLD_LAYOUT]
    lines = [
        f"One model server on {result['uri']}: as the pool starts it / the old layout "
        "(`mlflow models serve` on the version without its compiled form)",
        f"  cold start, start -> first priced answer (s, median): {new['cold_start_seconds']:.1f}"
        f" {new['cold_starts']} / {old['cold_start_seconds']:.1f} {old['cold_starts']} = "
        f"{result['cold_start_ratio']:.2f}x",
    ]
    for name, layout in ((POOL, new), (OLD_LAYOUT, old)):
        rss = layout["rss_mb"]
        each = ", ".join(
            f"{p['role']} (pid {p['pid']}) {p['rss_mb']:.0f}" for p in rss["processes"]
        )
        lines.append(
            f"  RSS MB, {name.replace('_', ' ')}: {rss['total']:.0f} ({each}); PSS {rss['pss']:.0f}"
        )
    artifact = result["artifact_mb"]
    files = ", ".join(f"{name} {mb:.1f}" for name, mb in artifact.items() if name != "total")
    lines.append(f"  artifact on disk: {artifact['total']:.1f} MB ({files})")
    if result.get("test_mae") is not None:
        lines.append(f"  test MAE: {result['test_mae']:,.1f} UF")
    controller = result.get("controller")
    if controller:
        lines.append(
            f"  rollout controller (pid {controller['pid']}), pool of 1 serving, "
            f"{controller['idle_seconds']:g} s idle: {controller['rss_mb']:.0f} MB RSS"
        )
    return lines


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
    """Print one model server's RSS and cold start in both layouts, the artifact size, the
    test MAE and the controller's idle RSS."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    workdir = store.resolve() if store else Path(tempfile.mkdtemp(prefix="bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(workdir, source, starts)
    finally:
        if store is None:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo("\n".join(render(result)))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
