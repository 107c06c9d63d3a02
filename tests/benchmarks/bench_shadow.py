"""The challenger in shadow in `make bench`: two gateways side by side on the same served-model
file, one copying no request to the challenger (SHADOW_SHARE=0) and one copying every request
(SHADOW_SHARE=1), in front of the same pool of MODEL_SERVERS servers and the same challenger
server, measured in alternating windows (16 clients, then one): the clients' p50 (the median of
the windows' p50s) and req/s, the gateway's CPU per request at 0% and 100%, the CPU of the pool
and of the challenger, and the copies sent, dropped and failed. A window of the gateway that
copies ends when every copy of its requests was sent or dropped: the copies it queued are not
sent during the other gateway's next window, and the CPU they cost is counted as its own
(`gateway_cpu_ms_with_copies`: the gateway's CPU from the window's start to the last copy,
per request it answered meanwhile).

The challenger is a copy of the champion (a new version of the same model files under the
challenger alias): what is measured is the copying, not a second model.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.benchmarks import bench_measure as measure
from tests.benchmarks import bench_stack as stack
from tests.benchmarks.bench_pool import POLL_SECONDS, POOL_ROUNDS, _champion, _copy_version
from tests.support.gateway import RunningGateway, metric_samples, metric_sum, running_gateway
from tests.support.processes import free_port, wait_until
from tests.support.rollout import Controller, mlflow_client, running_controller

logger = logging.getLogger(__name__)

SHARES = (0, 1)  # SHADOW_SHARE of the two gateways
CHALLENGER_ALIAS = "challenger"
RESULTS = ("sent", "dropped", "failed")
DRAIN_TIMEOUT_SECONDS = 120


@contextlib.contextmanager
def challenger_copy(env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """The champion's version and a copy of it under the challenger alias, which goes at the
    end."""
    champion = _champion(env)
    challenger = _copy_version(env, champion)
    client = mlflow_client(env)
    client.set_registered_model_alias(stack.MODEL_NAME, CHALLENGER_ALIAS, challenger)
    try:
        yield champion, challenger
    finally:
        client.delete_registered_model_alias(stack.MODEL_NAME, CHALLENGER_ALIAS)


@contextlib.contextmanager
def shadow_stack(
    workdir: Path, env: dict[str, str], gateway_workers: int
) -> Iterator[tuple[Controller, dict[int, RunningGateway], str]]:
    """The controller serving the champion and the challenger in shadow; a gateway per share
    in SHARES on its file."""
    env = {**env, "ROLLOUT_POLL_SECONDS": POLL_SECONDS}
    with contextlib.ExitStack() as running:
        champion, challenger = running.enter_context(challenger_copy(env))
        controller = running.enter_context(running_controller(workdir, env))
        controller.wait_served(champion, timeout=300)
        wait_until(
            lambda: (controller.served().get("shadow") or {}).get("version") == challenger,
            300,
            "the challenger in shadow",
            interval=0.5,
        )
        passed = {k: v for k, v in env.items() if k.startswith(("GATEWAY_", "OMP_"))}
        gateways = {
            share: running.enter_context(
                running_gateway(
                    workdir / f"gateway-{share}",
                    f"http://127.0.0.1:{free_port()}",
                    info_path=controller.info_path,
                    workers=gateway_workers,
                    extra_env={**passed, "SHADOW_SHARE": str(share)},
                )
            )
            for share in SHARES
        }
        yield controller, gateways, challenger


def measure_shadow(
    workdir: Path,
    env: dict[str, str],
    batches: Sequence,
    clients: int,
    plan: dict[str, Any],
    gateway_workers: int,
) -> dict[str, Any]:
    """Each share through its gateway: `clients` clients, then one, POOL_ROUNDS alternating
    windows each; CPU per request of the gateway, the pool and the challenger; the copies."""
    with shadow_stack(workdir / "shadow", env, gateway_workers) as (controller, gateways, version):
        served = controller.served()
        groups = {
            "pool": list(served["pids"].values()),
            "challenger": list(served["shadow"]["pids"].values()),
        }
        routes = {}
        for share, gateway in gateways.items():
            route = measure.Http(
                measure.GATEWAY, "127.0.0.1", gateway.port, {"X-API-Key": stack.API_KEY}
            )
            meter = stack.CpuMeter({"gateway": gateway.pid})
            routes[share] = (route, _with_servers(meter, groups))
        logger.info("gateways copying %s of the requests: %d clients", list(routes), clients)
        warmup, duration = plan["warmup"], plan["duration"]
        many = _alternating(gateways, routes, batches, clients, warmup, duration)
        single = _alternating(gateways, routes, batches, 1, warmup, duration / 2)
        results: dict[str, Any] = {"challenger_version": version, "shares": {}}
        for share, gateway in gateways.items():
            samples = metric_samples(gateway)
            results["shares"][share] = many[share] | {
                "single_client_p50_ms": single[share].get("p50_ms"),
                "single_client_cpu_ms": single[share]["cpu_ms_per_request"],
                "single_client_gateway_cpu_ms_with_copies": single[share][
                    "gateway_cpu_ms_with_copies"
                ],
                "copies": {
                    r: metric_sum(samples, "gateway_shadow_requests_total", result=r)
                    for r in RESULTS
                },
            }
    return results


def _alternating(
    gateways: dict[int, RunningGateway],
    routes: dict[int, tuple[measure.Http, Any]],
    batches: Sequence,
    clients: int,
    warmup: float,
    duration: float,
) -> dict[int, dict[str, Any]]:
    """`measure.concurrent` on each gateway in turn, POOL_ROUNDS times, each window of the
    copying one followed by the sending of its copies; the windows of each gateway pooled."""
    windows: dict[int, list[dict[str, Any]]] = {share: [] for share in routes}
    for _ in range(POOL_ROUNDS):
        for share, (route, cpu) in routes.items():
            gateway = gateways[share]
            spent, answered = cpu()["gateway"], _answered(gateway)
            window = measure.concurrent(
                route, batches, clients, warmup, duration / POOL_ROUNDS, cpu
            )
            if share:
                _drained(gateway)
            window["gateway_cpu_spent"] = cpu()["gateway"] - spent
            window["gateway_answered"] = _answered(gateway) - answered
            windows[share].append(window)
    return {share: _pooled(pooled) for share, pooled in windows.items()}


def _pooled(windows: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(w["requests"] for w in windows)
    groups = windows[0]["cpu_ms_per_request"]
    return {
        "clients": windows[0]["clients"],
        "seconds": sum(w["seconds"] for w in windows),
        "requests": requests,
        "requests_per_s": requests / sum(w["seconds"] for w in windows),
        "errors": sum(w["errors"] for w in windows),
        "p50_ms": statistics.median(w["p50_ms"] for w in windows),
        "windows_p50_ms": [w["p50_ms"] for w in windows],
        "p99_ms": max(w["p99_ms"] for w in windows),
        "cpu_ms_per_request": {
            g: sum((w["cpu_ms_per_request"][g] or 0) * w["requests"] for w in windows) / requests
            for g in groups
        },
        "gateway_cpu_ms_with_copies": 1e3
        * sum(w["gateway_cpu_spent"] for w in windows)
        / sum(w["gateway_answered"] for w in windows),
    }


def _answered(gateway: RunningGateway) -> float:
    samples = metric_samples(gateway)
    return metric_sum(samples, "gateway_requests_total", endpoint="/invocations", status="200")


def _drained(gateway: RunningGateway) -> None:
    """Until every request the gateway answered has its copy sent, dropped or failed."""

    def done() -> bool:
        samples = metric_samples(gateway)
        copies = sum(
            metric_sum(samples, "gateway_shadow_requests_total", result=r) for r in RESULTS
        )
        answered = metric_sum(samples, "gateway_requests_total", endpoint="/invocations")
        return copies >= answered

    wait_until(done, DRAIN_TIMEOUT_SECONDS, "the copies sent or dropped", interval=0.2)


def _with_servers(meter: stack.CpuMeter, groups: dict[str, list[int]]) -> Any:
    """`meter` plus the CPU of each group of server processes (their process groups)."""
    leaders = {f"{name} {pid}": pid for name, pids in groups.items() for pid in pids}
    servers = stack.CpuMeter(leaders)

    def read() -> dict[str, float]:
        spent = servers()
        totals = {
            name: sum(v for k, v in spent.items() if k.startswith(f"{name} ")) for name in groups
        }
        return meter() | totals

    return read


def render(shadow: dict[str, Any]) -> list[str]:
    """The shadow's part of the report."""
    lines = [
        "",
        f"Challenger in shadow (version {shadow['challenger_version']}, a copy of the champion) "
        "through the gateway, the same pool and challenger server",
        f"  {'copied':<8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'1-client p50':>14}"
        f"{'gateway CPU ms/req':>20}{'1-client':>10}{'challenger CPU':>16}"
        f"{'sent':>8}{'dropped':>9}{'failed':>8}",
    ]
    for share, s in shadow["shares"].items():
        cpu, copies = s["cpu_ms_per_request"], s["copies"]
        lines.append(
            f"  {f'{float(share):.0%}':<8}{s['requests_per_s']:>8.1f}{s.get('p50_ms', 0):>9.2f}"
            f"{s.get('p99_ms', 0):>9.2f}{s['errors']:>8}{s.get('single_client_p50_ms') or 0:>14.2f}"
            f"{s['gateway_cpu_ms_with_copies']:>20.3f}"
            f"{s['single_client_gateway_cpu_ms_with_copies']:>10.3f}"
            f"{cpu['challenger']:>16.3f}{copies['sent']:>8.0f}{copies['dropped']:>9.0f}"
            f"{copies['failed']:>8.0f}"
        )
    lines.append(
        "  p50: the median of the windows' p50s; gateway CPU: from a window's start to its last "
        "copy sent or dropped, per request answered"
    )
    return lines
