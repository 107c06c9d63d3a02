"""The challenger in shadow in `make bench`: two gateways side by side on the same served-model
file, one copying no request to the challenger (SHADOW_SHARE=0) and one copying every request
(SHADOW_SHARE=1), in front of the same pool of MODEL_SERVERS servers and the same challenger
server, measured in alternating windows (16 clients, then one): the clients' p50 and req/s, the
gateway's CPU per request at 0% and 100%, the CPU of the pool and of the challenger, and the
copies sent, dropped and failed.

The challenger is a copy of the champion (a new version of the same model files under the
challenger alias): what is measured is the copying, not a second model.
"""

from __future__ import annotations

import contextlib
import logging
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
        many = measure.alternating(routes, batches, clients, warmup, duration, POOL_ROUNDS)
        single = measure.alternating(routes, batches, 1, warmup, duration / 2, POOL_ROUNDS)
        results: dict[str, Any] = {"challenger_version": version, "shares": {}}
        for share, gateway in gateways.items():
            samples = metric_samples(gateway)
            results["shares"][share] = many[share] | {
                "single_client_p50_ms": single[share].get("p50_ms"),
                "single_client_cpu_ms": single[share]["cpu_ms_per_request"],
                "copies": {
                    r: metric_sum(samples, "gateway_shadow_requests_total", result=r)
                    for r in RESULTS
                },
            }
    return results


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
            f"{cpu['gateway']:>20.3f}{s['single_client_cpu_ms']['gateway']:>10.3f}"
            f"{cpu['challenger']:>16.3f}{copies['sent']:>8.0f}{copies['dropped']:>9.0f}"
            f"{copies['failed']:>8.0f}"
        )
    return lines
