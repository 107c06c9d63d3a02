"""`make bench`: in-process `predict` vs `mlflow models serve` vs the gateway, in one run.

    python -m tests.benchmarks.run [--quick] [--output bench-results/bench.json]

Trains a model with `mlflow run . -e main --env-manager local` into a throw-away store (timed:
the pipeline's wall time on data of the client's size), starts the real model server and a
real gateway on free loopback ports, then measures: single-row latency (p50, p99), rows/s for
batches of 1, 100 and 10,000 rows on the three paths, and requests/s of concurrent clients
through the model server and through the gateway; then the model server pool of the rollout
controller (`bench_pool`): 16 clients through the gateway with 1 and with MODEL_SERVERS
servers, and the longest gap between answers during a rollout; first, one model server's cold
start and RSS as the pool starts it and in the old layout (plain `mlflow models serve` on the
version without its compiled form), and the
rollout controller's idle RSS (`bench_memory`; `--skip-memory` skips them). Beside the gateway,
the floor (`floor_app`) in front of the same model server. Prints a table with ratios and the
targets (each a ratio to a baseline measured in the same run, with both figures), saves
everything as JSON, reports the RSS of every process it started, and always stops them.
Then the challenger in shadow (`bench_shadow`): the gateway copying no request and every
request to a challenger, side by side on the same pool, 16 clients and one, with the gateway's
CPU per request at 0% and 100%. `--only-pool` measures the pool alone, `--only-shadow` the
shadow alone. `--quick` is a smoke run of a few minutes (small data,
the notebook preset, short windows, one start of each layout).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from config.settings import Settings
from tests.benchmarks import bench_measure as measure
from tests.benchmarks import bench_memory, bench_pool, bench_shadow
from tests.benchmarks import bench_report as report
from tests.benchmarks import bench_stack as stack
from tests.benchmarks.bench_client import make_batches
from tests.support.rollout import mlflow_client

logger = logging.getLogger(__name__)

CLIENT_SOURCE = "synthetic"  # the client's size: 16,212 training and 6,949 test rows
QUICK_SOURCE = "synthetic:train_rows=2000,test_rows=600"
BATCH_SIZES = (1, 100, 10_000)
FULL = {
    "counts": {1: 1000, 100: 100, 10_000: 10},
    "rounds": 5,
    "warmup": 2.0,
    "duration": 20.0,
    "fast_path_rows": 300,
    "memory_starts": 3,
}
QUICK = {
    "counts": {1: 200, 100: 20, 10_000: 3},
    "rounds": 2,
    "warmup": 1.0,
    "duration": 5.0,
    "fast_path_rows": 100,
    "memory_starts": 1,
}
POOL = {1: 500, 100: 20, 10_000: 2}  # distinct batches of each size


@click.command()
@click.option(
    "--quick",
    is_flag=True,
    help="Smoke run of about a minute (small data, "
    "notebook preset, short windows); the pipeline time is then not the client's.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-results/bench.json"),
    show_default=True,
    help="Where to save the results as JSON.",
)
@click.option(
    "--clients",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    help="Concurrent clients of the concurrency test.",
)
@click.option(
    "--duration",
    type=click.FloatRange(1, 600),
    default=None,
    help="Seconds measured per concurrency test (default 20; 5 with --quick).",
)
@click.option(
    "--model-workers",
    type=click.IntRange(1, 16),
    default=None,
    help="MODEL_WORKERS of the model server (default: the environment's, else 1).",
)
@click.option(
    "--gateway-workers",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="GATEWAY_WORKERS (gunicorn processes).",
)
@click.option(
    "--gateway-connections",
    type=click.IntRange(1, 10_000),
    default=None,
    help="GATEWAY_CONNECTIONS per worker (default: the environment's, else 100).",
)
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the tracking store and state in this folder (kept afterwards); when "
    "it already has a champion the pipeline is not run again.",
)
@click.option(
    "--model-servers",
    type=click.IntRange(2, 16),
    default=None,
    help="The larger pool measured (default: MODEL_SERVERS, one per core).",
)
@click.option("--only-pool", is_flag=True, help="Measure the model server pool only.")
@click.option("--only-shadow", is_flag=True, help="Measure the challenger in shadow only.")
@click.option(
    "--skip-memory",
    is_flag=True,
    help="Skip one model server's RSS and cold start (as the pool starts it and in the old "
    "layout) and the rollout controller's idle RSS.",
)
def main(
    quick: bool,
    output: Path,
    clients: int,
    duration: float | None,
    model_workers: int | None,
    gateway_workers: int,
    gateway_connections: int | None,
    store: Path | None,
    model_servers: int | None,
    only_pool: bool,
    only_shadow: bool,
    skip_memory: bool,
) -> None:
    """Benchmark the serving paths; print the table and save the JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    plan = {**(QUICK if quick else FULL)}
    if duration is not None:
        plan["duration"] = duration
    defaults = Settings.from_env()
    settings = {
        "MODEL_WORKERS": model_workers or defaults.model_workers,
        "GATEWAY_WORKERS": gateway_workers,
        "GATEWAY_CONNECTIONS": gateway_connections or defaults.gateway_connections,
        "MODEL_SERVERS": max(2, model_servers or defaults.model_servers),
    }
    workdir = store.resolve() if store else Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = benchmark(
            workdir,
            quick,
            plan,
            clients,
            settings,
            reuse=store is not None,
            only_pool=only_pool,
            only_shadow=only_shadow,
            memory=not (skip_memory or only_pool or only_shadow),
        )
    finally:
        if store is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if only_shadow:
        click.echo("\n".join(bench_shadow.render(results["shadow"])))
        click.echo("\n".join(report.target_lines(report.shadow_targets(results["shadow"]))))
    else:
        if not only_pool:
            click.echo(report.render(results))
        click.echo("\n".join(bench_pool.render(results["pool"])))
        if results.get("shadow"):
            click.echo("\n".join(bench_shadow.render(results["shadow"])))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str))
    click.echo(f"\nresults saved to {output}")


def benchmark(
    workdir: Path,
    quick: bool,
    plan: dict[str, Any],
    clients: int,
    settings: dict[str, int],
    reuse: bool,
    only_pool: bool,
    only_shadow: bool,
    memory: bool,
) -> dict[str, Any]:
    """Everything, with every started process stopped on the way out."""
    env = stack.bench_env(workdir, **{k: str(v) for k, v in settings.items()})
    load_before = os.getloadavg()[0]
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    pipeline = train(workdir, env, quick, reuse)
    listings = listings_batches(load_model(env))
    batches = listings[1][:200]
    footprint = measure_memory(workdir, env, listings, plan) if memory else None
    shadow_args = (workdir, env, batches, clients, plan, settings["GATEWAY_WORKERS"])
    if only_shadow:
        return {"shadow": bench_shadow.measure_shadow(*shadow_args), "pipeline": pipeline}
    pool = bench_pool.measure_pools(
        workdir,
        env,
        batches,
        (1, settings["MODEL_SERVERS"]),
        clients,
        plan,
        settings["GATEWAY_WORKERS"],
    )
    if only_pool:
        return {"pool": pool, "pipeline": pipeline, "meta": {"started": started}}
    shadow = bench_shadow.measure_shadow(*shadow_args)
    with contextlib.ExitStack() as running:
        logger.info("starting the model server (MODEL_WORKERS=%s)", settings["MODEL_WORKERS"])
        server = running.enter_context(stack.model_server(workdir, env))
        logger.info(
            "starting the gateway (%s workers x %s connections)",
            settings["GATEWAY_WORKERS"],
            settings["GATEWAY_CONNECTIONS"],
        )
        gateway = running.enter_context(
            stack.gateway(workdir, server.url, settings["GATEWAY_WORKERS"], env)
        )
        logger.info("starting the one-hop baseline (FastAPI, uvicorn, 1 worker)")
        one_hop = running.enter_context(stack.baseline(workdir, env))
        logger.info("starting the floor (floor_app) in front of the same model server")
        floor_port, floor_pid = running.enter_context(
            bench_pool.floor_app(workdir, env, settings["GATEWAY_WORKERS"], server.url)
        )
        groups = {
            "model server": server.process.pid,
            "gateway": gateway.pid,
            measure.BASELINE: one_hop.pid,
            measure.FLOOR: floor_pid,
        }
        ports = {
            measure.MODEL_SERVER: server.port,
            measure.GATEWAY: gateway.port,
            measure.BASELINE: one_hop.port,
            measure.FLOOR: floor_port,
        }
        results = measure_all(env, ports, plan, clients, groups)
    results["pipeline"] = pipeline
    results["pool"] = pool
    results["shadow"] = shadow
    results["memory"] = footprint
    results["meta"] = {
        "started": started,
        "quick": quick,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "python": platform.python_version(),
        "settings": {**settings, "clients": clients},
        "model": results.pop("model"),
        "plan": plan,
    }
    results["ratios"] = report.ratios(results)
    results["targets"] = report.targets(results)
    if footprint:
        results["targets"] += report.memory_targets(footprint)
    results["footprint"] = report.footprint(results["rss_mb"]["after_load"])
    return results


def measure_memory(
    workdir: Path, env: dict[str, str], listings: dict[int, list], plan: dict[str, Any]
) -> dict[str, Any]:
    """One model server on the champion's version as the pool starts it and in the old layout
    (cold start, RSS), the artifact's size, the controller's idle RSS (`bench_memory`)."""
    version = mlflow_client(env).get_model_version_by_alias(stack.MODEL_NAME, "champion")
    uri = f"models:/{stack.MODEL_NAME}/{version.version}"
    batch = listings[10_000][0].frame.head(bench_memory.BATCH_ROWS).to_dict("records")
    logger.info("one model server on %s: the pool's layout and the old one", uri)
    found = bench_memory.measure_version(workdir / "memory", env, uri, batch, plan["memory_starts"])
    mae = version.tags.get("test_mae")
    return found | {"test_mae": float(mae) if mae else None}


def train(workdir: Path, env: dict[str, str], quick: bool, reuse: bool) -> dict[str, Any]:
    """The timed pipeline run, unless a kept store (`reuse`) already has a champion."""
    if reuse and stack.has_champion(env):
        logger.info("the store in %s has a champion: not training again", workdir)
        return {"skipped": True}
    source = QUICK_SOURCE if quick else CLIENT_SOURCE
    run = stack.run_pipeline(env, source, "notebook" if quick else "", workdir / "pipeline.log")
    logger.info("pipeline took %.1f s", run.wall_seconds)
    return {
        "command": run.command,
        "source": source,
        "wall_seconds": run.wall_seconds,
        "peak_rss_mb": run.peak_rss_mb,
    }


def measure_all(
    env: dict[str, str],
    ports: dict[str, int],
    plan: dict[str, Any],
    clients: int,
    groups: dict[str, int],
) -> dict[str, Any]:
    """In-process vs model server vs gateway vs the one-hop baseline: sequential, then
    concurrent."""
    model = load_model(env)
    batches = listings_batches(model)
    routes: list[measure.Route] = [
        measure.InProcess(model),
        measure.Http(measure.MODEL_SERVER, "127.0.0.1", ports[measure.MODEL_SERVER]),
        measure.Http(
            measure.GATEWAY, "127.0.0.1", ports[measure.GATEWAY], {"X-API-Key": stack.API_KEY}
        ),
        measure.Http(measure.BASELINE, "127.0.0.1", ports[measure.BASELINE]),
        measure.Http(measure.FLOOR, "127.0.0.1", ports[measure.FLOOR]),
    ]
    results: dict[str, Any] = {"model": describe_model(model)}
    results["agreement"] = measure.agreement(routes, batches[100][0])
    logger.info("fast path vs fitted pipeline, in-process, one row")
    results["fast_path"] = measure.fast_path_vs_pipeline(model, batches[1], plan["fast_path_rows"])
    results["rss_mb"] = {"idle": stack.rss_report(groups)}
    cpu = stack.CpuMeter(groups)
    logger.info("sequential requests: %s", plan["counts"])
    results["sequential"] = measure.sequential(routes, batches, plan["counts"], plan["rounds"], cpu)
    for route in routes:
        route.close()
    results["concurrency"] = {}
    for route in routes[1:4]:  # model server, gateway, baseline (the pool measures the floor)
        logger.info(
            "%d concurrent clients on the %s for %.0f s", clients, route.name, plan["duration"]
        )
        results["concurrency"][route.name] = measure.concurrent(
            route, batches[1][:200], clients, plan["warmup"], plan["duration"], cpu
        )
    results["rss_mb"]["after_load"] = stack.rss_report(groups)
    return results


def load_model(env: dict[str, str]):
    """The champion as a pyfunc model in this process (what the scoring server loads)."""
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.pyfunc.load_model(stack.MODEL_URI)


def describe_model(model) -> str:
    """Version, estimator and whether the fast path is on, for the report's header."""
    served = model.unwrap_python_model()
    regressor = served._pipeline.steps[-1][1]
    regressor = getattr(regressor, "regressor_", regressor)
    size = getattr(regressor, "n_iter_", None) or getattr(regressor, "n_estimators", None)
    fast = getattr(served, "_fast", None)
    return (
        f"{stack.MODEL_URI} (run {model.metadata.run_id}), {type(regressor).__name__} "
        f"with {size} trees, fast path {'on' if fast is not None else 'off'}"
    )


def listings_batches(model) -> dict[int, list]:
    """Batches of clean generated listings, only of categories the model knows."""
    from steps.generate import generate_listings

    known = model.unwrap_python_model()._categories
    listings = generate_listings(20_000, seed=2024, dirty=False)
    for name, values in known.items():
        listings = listings[listings[name].isin(values)]
    return {size: make_batches(listings, size, POOL[size], seed=size) for size in BATCH_SIZES}


if __name__ == "__main__":
    main()
