"""The benchmark's verdicts (ratios, targets, footprint) and its readable table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.benchmarks.bench_measure import (
    BASELINE,
    FAST_PATH,
    GATEWAY,
    IN_PROCESS,
    MODEL_SERVER,
    PIPELINE,
)

PATHS = (IN_PROCESS, MODEL_SERVER, GATEWAY, BASELINE)
GATEWAY_MEDIAN_BUDGET_MS = 0.5
POOL_VS_BASELINE_TARGET = 1.5  # 16 clients, req/s through the gateway and the pool
LATENCY_VS_BASELINE_TARGET = 1.3  # one client, p50
MODEL_SERVER_CPU_MS = 2.0  # CPU per single-row request
GATEWAY_CPU_MS = 0.6
IN_PROCESS_MEDIAN_BUDGET_MS = 2.0
BATCH_RATIO_TARGET = 0.5
BIG_BATCH = 10_000
CONCURRENT_TARGET = 150.0
GATEWAY_WORKER_RSS_MB = 150.0


def ratios(results: Mapping[str, Any]) -> dict[str, float]:
    """Ratios between the paths, all measured in the same run."""
    seq, conc = results["sequential"], results["concurrency"]
    one = {path: seq[path][1]["p50_ms"] for path in PATHS}
    out = {
        "latency_p50 model server / in-process": one[MODEL_SERVER] / one[IN_PROCESS],
        "latency_p50 gateway / model server": one[GATEWAY] / one[MODEL_SERVER],
        "latency_p50 gateway / in-process": one[GATEWAY] / one[IN_PROCESS],
        "gateway added ms at p50": one[GATEWAY] - one[MODEL_SERVER],
        "gateway added ms at p99": seq[GATEWAY][1]["p99_ms"] - seq[MODEL_SERVER][1]["p99_ms"],
        "latency_p50 fitted pipeline / fast path (in-process)": results["fast_path"][PIPELINE][
            "p50_ms"
        ]
        / results["fast_path"][FAST_PATH]["p50_ms"],
    }
    for size in seq[IN_PROCESS]:
        rows = {path: seq[path][size]["rows_per_s"] for path in PATHS}
        out[f"rows/s {size} model server / in-process"] = rows[MODEL_SERVER] / rows[IN_PROCESS]
        out[f"rows/s {size} gateway / in-process"] = rows[GATEWAY] / rows[IN_PROCESS]
        out[f"rows/s {size} gateway / model server"] = rows[GATEWAY] / rows[MODEL_SERVER]
    if conc.get(MODEL_SERVER, {}).get("requests_per_s"):
        out["req/s concurrent gateway / model server"] = (
            conc[GATEWAY]["requests_per_s"] / conc[MODEL_SERVER]["requests_per_s"]
        )
    return out | baseline_ratios(results)


def baseline_ratios(results: Mapping[str, Any]) -> dict[str, float]:
    """Our paths against the one-hop baseline measured in the same run."""
    seq, conc = results["sequential"], results["concurrency"]
    base_p50, base_rps = seq[BASELINE][1]["p50_ms"], conc[BASELINE]["requests_per_s"]
    pool = results["pool"]["sizes"][max(results["pool"]["sizes"])]
    return {
        "latency_p50 model server / one-hop baseline": seq[MODEL_SERVER][1]["p50_ms"] / base_p50,
        "latency_p50 gateway / one-hop baseline": seq[GATEWAY][1]["p50_ms"] / base_p50,
        "req/s concurrent model server / one-hop baseline": (
            conc[MODEL_SERVER]["requests_per_s"] / base_rps
        ),
        "req/s concurrent gateway / one-hop baseline": conc[GATEWAY]["requests_per_s"] / base_rps,
        "req/s concurrent gateway with the pool / one-hop": pool["requests_per_s"] / base_rps,
    }


def cpu_per_row(results: Mapping[str, Any], path: str, group: str) -> float:
    """CPU ms that `group` spent per single-row request sent one at a time down `path`."""
    return results["sequential"][path][1]["cpu_ms_per_request"].get(group, float("nan"))


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The three targets of the issue, each with its measured value and verdict."""
    seq, ratio = results["sequential"], results["ratios"]
    added = ratio["gateway added ms at p50"]
    big = f"rows/s {BIG_BATCH} gateway / in-process"
    concurrent = results["concurrency"][GATEWAY]
    fast = results["fast_path"][FAST_PATH]["p50_ms"]
    checks = [
        {
            "name": f"in-process single row <= {IN_PROCESS_MEDIAN_BUDGET_MS:g} ms at the median",
            "value": round(fast, 3),
            "unit": "ms",
            "pass": fast <= IN_PROCESS_MEDIAN_BUDGET_MS,
        },
        {
            "name": f"gateway adds <= {GATEWAY_MEDIAN_BUDGET_MS:g} ms at the median (one row)",
            "value": round(added, 3),
            "unit": "ms",
            "pass": added <= GATEWAY_MEDIAN_BUDGET_MS,
        },
        {
            "name": f"gateway {BIG_BATCH:,}-row batch >= {BATCH_RATIO_TARGET:g} x "
            "in-process rows/s",
            "value": round(ratio[big], 3) if big in ratio else None,
            "unit": "x",
            "pass": big in ratio and ratio[big] >= BATCH_RATIO_TARGET,
        },
        {
            "name": f"{concurrent['clients']} clients through the gateway >= "
            f"{CONCURRENT_TARGET:g} req/s (one row)",
            "value": round(concurrent["requests_per_s"], 1),
            "unit": "req/s",
            "pass": concurrent["requests_per_s"] >= CONCURRENT_TARGET and not concurrent["errors"],
        },
    ]
    if BIG_BATCH not in seq[IN_PROCESS]:
        checks[2]["name"] += " (not measured)"
    return checks + baseline_targets(results)


def baseline_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 13: the two hops against the one-hop baseline, and CPU per request."""
    ratio = results["ratios"]
    pool = ratio["req/s concurrent gateway with the pool / one-hop"]
    latency = ratio["latency_p50 gateway / one-hop baseline"]
    server = cpu_per_row(results, GATEWAY, MODEL_SERVER)  # the body the gateway sends it
    gateway = cpu_per_row(results, GATEWAY, GATEWAY)
    return [
        {
            "name": f"pool through the gateway >= {POOL_VS_BASELINE_TARGET:g} x one-hop req/s",
            "value": round(pool, 3),
            "unit": "x",
            "pass": pool >= POOL_VS_BASELINE_TARGET,
        },
        {
            "name": f"gateway one-client p50 <= {LATENCY_VS_BASELINE_TARGET:g} x one-hop's",
            "value": round(latency, 3),
            "unit": "x",
            "pass": latency <= LATENCY_VS_BASELINE_TARGET,
        },
        {
            "name": f"model server CPU per one-row request via the gateway <= "
            f"{MODEL_SERVER_CPU_MS:g} ms",
            "value": round(server, 3),
            "unit": "ms",
            "pass": server <= MODEL_SERVER_CPU_MS,
        },
        {
            "name": f"gateway CPU per one-row request <= {GATEWAY_CPU_MS:g} ms",
            "value": round(gateway, 3),
            "unit": "ms",
            "pass": gateway <= GATEWAY_CPU_MS,
        },
    ]


def footprint(rss: list[dict[str, Any]]) -> dict[str, Any]:
    """The design's footprint contract for the gateway: every worker well under 150 MB."""
    workers = [r["rss_mb"] for r in rss if r["role"] == "gunicorn worker"]
    return {
        "gateway_worker_max_rss_mb": max(workers) if workers else None,
        "limit_mb": GATEWAY_WORKER_RSS_MB,
        "pass": bool(workers) and max(workers) < GATEWAY_WORKER_RSS_MB,
    }


def render(results: Mapping[str, Any]) -> str:
    """The whole report as text."""
    meta = results["meta"]
    lines = [
        f"Serving benchmark  {meta['started']}  ({meta['cpus']} cores, load average "
        f"{meta['load_before']:.2f} before, {meta['load_after']:.2f} after)"
        + ("  [--quick]" if meta["quick"] else ""),
        f"model: {meta['model']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in meta["settings"].items()),
        "",
    ]
    lines += _pipeline(results["pipeline"])
    lines += _latency(results["sequential"])
    lines += fast_path_lines(results["fast_path"])
    lines += _throughput(results["sequential"])
    lines += _cpu(results["sequential"])
    lines += _concurrency(results["concurrency"])
    lines += ["", "Ratios (same run)"]
    lines += [f"  {name:<48} {value:>9.2f}" for name, value in results["ratios"].items()]
    lines += ["", "Agreement with in-process prices (max relative difference)"]
    lines += [f"  {name:<48} {value:>9.1e}" for name, value in results["agreement"].items()]
    lines += [
        "",
        "Targets"
        + (
            "  (--quick serves a smaller, faster model: judge the targets on a full run)"
            if meta["quick"]
            else ""
        ),
    ]
    lines += [
        f"  {'PASS' if t['pass'] else 'FAIL'}  {t['name']:<62} {_num(t['value'])} {t['unit']}"
        for t in results["targets"]
    ]
    lines += _processes(results["rss_mb"], results["footprint"])
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"


def _pipeline(pipeline: Mapping[str, Any]) -> list[str]:
    if pipeline.get("skipped"):
        return ["Pipeline: skipped (the kept --store already has a champion)", ""]
    command = ["mlflow", *pipeline["command"][1:]]
    return [
        f"Pipeline: {' '.join(command)}",
        f"  wall time {pipeline['wall_seconds']:.1f} s, largest process "
        f"{pipeline['peak_rss_mb']:.0f} MB RSS  (source {pipeline['source']})",
        "",
    ]


def _latency(seq: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Single-row latency, one client     {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'n':>6}"
    ]
    for path in PATHS:
        s = seq[path][1]
        lines.append(
            f"  {path:<32} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['mean_ms']:>9.3f} {s['n']:>6}"
        )
    return [*lines, ""]


def fast_path_lines(fast: Mapping[str, Any]) -> list[str]:
    """The served model's single-row predict against its fitted pipeline's, in-process."""
    lines = [f"Fast path vs fitted pipeline, one row  {'p50 ms':>9} {'p99 ms':>9} {'n':>6}"]
    lines += [
        f"  {path:<37}{fast[path]['p50_ms']:>9.3f} {fast[path]['p99_ms']:>9.3f} "
        f"{fast[path]['n']:>6}"
        for path in (FAST_PATH, PIPELINE)
    ]
    ratio = fast[PIPELINE]["p50_ms"] / fast[FAST_PATH]["p50_ms"]
    lines.append(
        f"  pipeline / fast path {ratio:.1f}x at p50; prices differ by at most "
        f"{fast['max_relative_difference']:.1e} (relative)"
    )
    return [*lines, ""]


def _throughput(seq: Mapping[str, Any]) -> list[str]:
    sizes = list(seq[IN_PROCESS])
    header = "".join(f"{f'{size:,} rows':>14}" for size in sizes)
    lines = [f"Throughput, one client (rows/s)   {header}"]
    for path in PATHS:
        cells = "".join(f"{seq[path][size]['rows_per_s']:>14,.0f}" for size in sizes)
        lines.append(f"  {path:<32}{cells}")
    lines.append("  (rows per median request time; totals over all requests are in the JSON)")
    return [*lines, ""]


def _cpu(seq: Mapping[str, Any]) -> list[str]:
    sizes = list(seq[IN_PROCESS])
    groups = list(seq[GATEWAY][sizes[0]]["cpu_ms_per_request"])
    if not groups:
        return []
    header = "".join(f"{g:>18}" for g in groups)
    lines = [f"CPU ms per request, one client     {header}"]
    for path in PATHS:
        for size in sizes:
            spent = seq[path][size]["cpu_ms_per_request"]
            cells = "".join(f"{spent.get(g, 0.0):>18.2f}" for g in groups)
            lines.append(f"  {path:<16} {f'{size:,} rows':>12}    {cells}")
    return [*lines, ""]


def _concurrency(conc: Mapping[str, Any]) -> list[str]:
    if not conc:
        return []
    clients = next(iter(conc.values()))["clients"]
    lines = [
        f"Concurrency: {clients} keep-alive clients, one row per request",
        f"  {'':<16}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}   CPU ms per request",
    ]
    for path, c in conc.items():
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in c["cpu_ms_per_request"].items() if v is not None)
        lines.append(
            f"  {path:<16}{c['requests_per_s']:>8.1f}{c.get('p50_ms', 0):>9.2f}"
            f"{c.get('p99_ms', 0):>9.2f}{c['errors']:>8}   {cpu}"
        )
        if c["first_error"]:
            lines.append(f"    first error: {c['first_error']}")
    return lines


def _processes(rss: Mapping[str, list[dict[str, Any]]], fp: Mapping[str, Any]) -> list[str]:
    after = {r["pid"]: r["rss_mb"] for r in rss.get("after_load", [])}
    lines = ["", "Processes started (RSS MB: idle -> after the load)"]
    for r in rss["idle"]:
        later = after.get(r["pid"])
        lines.append(
            f"  {r['group']:<13} {r['role']:<32} pid {r['pid']:<8} {r['rss_mb']:>7.1f} -> "
            f"{f'{later:.1f}' if later is not None else 'gone'}"
        )
    worker = fp["gateway_worker_max_rss_mb"]
    largest = "-" if worker is None else f"{worker:.1f}"
    lines.append(
        f"  gateway workers < {fp['limit_mb']:g} MB each: "
        f"{'PASS' if fp['pass'] else 'FAIL'} (largest {largest} MB)"
    )
    return lines
