"""The model server pool in `make bench`: the rollout controller and the gateway, measured with
a pool of 1 server and of MODEL_SERVERS servers in the same run (16-client req/s, p50/p99,
single-client p50, and their ratio). Both pools run side by side (1 + MODEL_SERVERS model
servers, about 1 GB of RSS each) and are measured in turn, POOL_ROUNDS short windows each, so
that a slower minute of the machine falls on both; then, the largest pool alone, the longest
gap between two successful answers while a rollout happens under 16 clients. Beside them, the
floor: Flask under gunicorn with the gateway's worker class, workers and connections, passing
each body to one server (`floor_app`), and the ceiling of the pool's ratio that the measured
CPU costs leave on this machine's cores.

The rollout goes to a copy of the champion (a new version of the same model files and
evaluation tags, registered in a second): what is measured is the switch, not a training.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from config.settings import PROJECT_DIR
from gateway.worker import KEEPALIVE_SECONDS, GatewayWorker
from tests.benchmarks import bench_measure as measure
from tests.benchmarks import bench_stack as stack
from tests.support.gateway import LoadClients, RunningGateway, Shot, running_gateway
from tests.support.processes import VENV_BIN, free_port, running, wait_for_children
from tests.support.rollout import ONE_LISTING, Controller, mlflow_client, running_controller

logger = logging.getLogger(__name__)

POLL_SECONDS = "1"
POOL_ROUNDS = 4  # alternating windows per pool size
WORKER_CLASS = f"{GatewayWorker.__module__}.{GatewayWorker.__name__}"


@contextlib.contextmanager
def pool_stack(
    workdir: Path, env: dict[str, str], servers: int, gateway_workers: int
) -> Iterator[tuple[Controller, RunningGateway]]:
    """The controller with `servers` servers on the champion, and a gateway on its file."""
    env = {**env, "MODEL_SERVERS": str(servers), "ROLLOUT_POLL_SECONDS": POLL_SECONDS}
    with running_controller(workdir, env) as controller:
        version = controller.wait_served(_champion(env), timeout=300)["version"]
        logger.info("pool of %d server(s) serves version %s", servers, version)
        passed = {k: v for k, v in env.items() if k.startswith(("GATEWAY_", "OMP_"))}
        dead = f"http://127.0.0.1:{free_port()}"
        with running_gateway(
            workdir / "gateway",
            dead,
            info_path=controller.info_path,
            workers=gateway_workers,
            extra_env=passed,
        ) as gateway:
            yield controller, gateway


def measure_pools(
    workdir: Path,
    env: dict[str, str],
    batches: Sequence,
    sizes: Sequence[int],
    clients: int,
    plan: dict[str, Any],
    gateway_workers: int,
) -> dict[str, Any]:
    """Every pool size up at once, measured in alternation (16 clients, then one client); then,
    with the largest pool alone, the floor and a rollout."""
    largest = max(sizes)
    with pool_stack(workdir / f"pool-{largest}", env, largest, gateway_workers) as big:
        with contextlib.ExitStack() as smaller:
            pools = {
                size: smaller.enter_context(
                    pool_stack(workdir / f"pool-{size}", env, size, gateway_workers)
                )
                for size in sizes
                if size != largest
            } | {largest: big}
            results: dict[str, Any] = {"sizes": measure_sizes(pools, batches, clients, plan)}
        controller, gateway = big
        upstream = controller.served()["servers"][0]
        results["floor"] = measure_floor(
            workdir, env, batches, clients, plan, gateway_workers, upstream
        )
        results["rollout"] = rollout_gap(controller, gateway, env, clients)
    small, large = results["sizes"][min(sizes)], results["sizes"][largest]
    results["ratio_req_per_s"] = large["requests_per_s"] / small["requests_per_s"]
    results["ratio_single_client_p50"] = (
        large["single_client_p50_ms"] / small["single_client_p50_ms"]
    )
    results["ceiling"] = ratio_ceiling(small, large, results["floor"])
    return results


def measure_sizes(
    pools: dict[int, tuple[Controller, RunningGateway]],
    batches: Sequence,
    clients: int,
    plan: dict[str, Any],
) -> dict[int, dict[str, Any]]:
    """Per pool size, through its gateway: `clients` clients, then one, in POOL_ROUNDS
    alternating windows each; the CPU of the gateway and of each server; RSS."""
    routes, groups = {}, {}
    for size, (controller, gateway) in sorted(pools.items()):
        route = measure.Http(
            measure.GATEWAY, "127.0.0.1", gateway.port, {"X-API-Key": stack.API_KEY}
        )
        servers = controller.served()["pids"].values()
        groups[size] = {"gateway": gateway.pid} | {
            f"server {n}": pid for n, pid in enumerate(servers)
        }
        routes[size] = (route, stack.CpuMeter(groups[size]))
    logger.info("pools of %s: %d clients, %d rounds", list(routes), clients, POOL_ROUNDS)
    warmup, duration = plan["warmup"], plan["duration"]
    many = measure.alternating(routes, batches, clients, warmup, duration, POOL_ROUNDS)
    single = measure.alternating(routes, batches, 1, warmup, duration / 2, POOL_ROUNDS)
    for size, result in many.items():
        result["single_client_p50_ms"] = single[size].get("p50_ms")
        result["single_client_cpu_ms"] = single[size]["cpu_ms_per_request"]
        result["rss_mb"] = stack.rss_report(groups[size])
    return many


@contextlib.contextmanager
def floor_app(
    workdir: Path, env: dict[str, str], workers: int, upstream: str
) -> Iterator[tuple[int, int]]:
    """`floor_app` in front of `upstream` under gunicorn as the gateway runs (its worker class,
    workers, connections, keep-alive): its port and process group."""
    port = free_port()
    command = [str(VENV_BIN / "gunicorn"), "tests.benchmarks.floor_app:app", "--no-control-socket"]
    command += ["--bind", f"127.0.0.1:{port}", "--worker-class", WORKER_CLASS]
    command += ["--keep-alive", str(KEEPALIVE_SECONDS), "--workers", str(workers)]
    command += ["--worker-connections", env["GATEWAY_CONNECTIONS"]]
    command += ["--chdir", str(PROJECT_DIR)]
    url = f"http://127.0.0.1:{port}/ping"
    started = {**env, "FLOOR_UPSTREAM_URL": upstream}
    with running(command, url, workdir / "floor.log", env=started) as process:
        wait_for_children(process.pid, workers)
        yield port, process.pid


def measure_floor(
    workdir: Path,
    env: dict[str, str],
    batches: Sequence,
    clients: int,
    plan: dict[str, Any],
    workers: int,
    upstream: str,
) -> dict[str, float]:
    """CPU ms per request of the floor app in front of `upstream`, with `clients` clients and
    with one."""
    with floor_app(workdir, env, workers, upstream) as (port, pid):
        route = measure.Http("floor", "127.0.0.1", port)
        cpu = stack.CpuMeter({"floor": pid})
        logger.info("the floor: Flask under gunicorn in front of %s: %d clients", upstream, clients)
        many = measure.concurrent(route, batches, clients, plan["warmup"], plan["duration"], cpu)
        one = measure.concurrent(route, batches, 1, plan["warmup"], plan["duration"] / 2, cpu)
    return {
        "clients": many["cpu_ms_per_request"]["floor"],
        "single": one["cpu_ms_per_request"]["floor"],
    }


def ratio_ceiling(
    one: dict[str, Any], pool: dict[str, Any], floor: dict[str, float]
) -> dict[str, float]:
    """The largest req/s ratio of the pool over one server that this machine's cores allow at
    the CPU the pool run spent per request (servers, gateway and clients together); also with
    the gateway at the floor's cost."""
    cores = os.cpu_count() or 1
    spent = pool["cpu_ms_per_request"]
    total = sum(spent.values())

    def ceiling(cpu_ms: float) -> float:
        return cores * 1000 / cpu_ms / one["requests_per_s"]

    return {
        "cores": cores,
        "measured": ceiling(total),
        "gateway_at_floor": ceiling(total - spent["gateway"] + floor["clients"]),
    }


def rollout_gap(
    controller: Controller, gateway: RunningGateway, env: dict[str, str], clients: int
) -> dict[str, Any]:
    """Move the champion alias to a copy of the served version under `clients` clients; the
    longest time between two successful answers, and the failures, from the move to the end
    of the drain."""
    old = controller.served()["version"]
    new = _copy_version(env, old)
    shot = Shot(ONE_LISTING.kind, ONE_LISTING.body, 1, {"X-API-Key": stack.API_KEY})
    load = LoadClients(gateway.url, [shot], clients=clients, prefix="rollout").start()
    try:
        time.sleep(3)
        moved = time.monotonic()
        mlflow_client(env).set_registered_model_alias(stack.MODEL_NAME, "champion", new)
        controller.wait_served(new, timeout=300)
        switched = time.monotonic()
        time.sleep(float(env.get("GATEWAY_READ_TIMEOUT_SECONDS", "10")) + 4)  # the drain
    finally:
        sent = load.stop()
    during = sorted(s.ended for s in sent if s.status == 200 and s.ended >= moved)
    gaps = [b - a for a, b in itertools.pairwise(during)]
    first_new = min((s.started for s in sent if s.model_version == new), default=None)
    last_old = max((s.started for s in sent if s.model_version == old), default=None)
    return {
        "from_version": old,
        "to_version": new,
        "clients": clients,
        "seconds_to_switch": round(switched - moved, 1),
        "requests": len([s for s in sent if s.started >= moved]),
        "failed": len([s for s in sent if s.status != 200]),
        "longest_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
        "answers_of_new_version": len([s for s in sent if s.model_version == new]),
        # both versions answered requests sent in this window (0: never a new one before an old)
        "both_versions_ms": (
            round(max(0.0, last_old - first_new) * 1000, 1)
            if first_new is not None and last_old is not None
            else None
        ),
    }


def _champion(env: dict[str, str]) -> str:
    client = mlflow_client(env)
    return str(client.get_model_version_by_alias(stack.MODEL_NAME, "champion").version)


def _copy_version(env: dict[str, str], version: str) -> str:
    """A new version of the same model files, with the same evaluation tags."""
    client = mlflow_client(env)
    original = client.get_model_version(stack.MODEL_NAME, version)
    copy = client.create_model_version(
        stack.MODEL_NAME, original.source, original.run_id, tags=original.tags
    )
    return str(copy.version)


def render(pool: dict[str, Any]) -> list[str]:
    """The pool's part of the report."""
    lines = [
        "",
        "Model server pool through the gateway (rollout controller, 1-worker servers)",
        f"  {'servers':<10}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'1-client p50 ms':>17}{'servers RSS MB':>16}",
    ]
    for size, c in pool["sizes"].items():
        rss = sum(r["rss_mb"] for r in c["rss_mb"] if r["group"].startswith("server"))
        lines.append(
            f"  {size!s:<10}{c['requests_per_s']:>8.1f}{c.get('p50_ms', 0):>9.2f}"
            f"{c.get('p99_ms', 0):>9.2f}{c['errors']:>8}"
            f"{c.get('single_client_p50_ms') or 0:>17.2f}{rss:>16.0f}"
        )
    small, large = (pool["sizes"][size] for size in (min(pool["sizes"]), max(pool["sizes"])))
    windows = zip(small["windows_requests_per_s"], large["windows_requests_per_s"], strict=True)
    lines.append(
        f"  req/s ratio, largest / 1 server: {pool['ratio_req_per_s']:.2f} (window by window: "
        f"{', '.join(f'{b / a:.2f}' for a, b in windows)}); "
        f"1-client p50 ratio: {pool['ratio_single_client_p50']:.2f}"
    )
    floor, ceiling = pool.get("floor"), pool.get("ceiling")
    if floor and ceiling:
        big = pool["sizes"][max(pool["sizes"])]
        lines.append(
            f"  gateway CPU per request: {big['cpu_ms_per_request']['gateway']:.3f} ms "
            f"({big['clients']} clients), {big['single_client_cpu_ms']['gateway']:.3f} ms "
            f"(1 client); the floor, Flask under gunicorn passing the body to one server "
            f"(floor_app, same worker class, workers and connections): {floor['clients']:.3f} / "
            f"{floor['single']:.3f} ms"
        )
        lines.append(
            f"  req/s ratio that {ceiling['cores']} cores allow at the pool's CPU per request: "
            f"{ceiling['measured']:.2f}; with a gateway that cost no more than the floor: "
            f"{ceiling['gateway_at_floor']:.2f}"
        )
    r = pool.get("rollout")
    if r:
        lines.append(
            f"  rollout {r['from_version']} -> {r['to_version']} under {r['clients']} "
            f"clients: switched in {r['seconds_to_switch']} s, {r['requests']} requests, "
            f"{r['failed']} failed, longest gap between two answers "
            f"{r['longest_gap_ms']} ms; both versions answered requests sent within "
            f"{r.get('both_versions_ms')} ms of each other"
        )
    return lines
