"""The report's verdicts: every time and CPU target is a ratio to a baseline of the same run, so
that a uniformly slower machine passes and a regression of one side fails; memory targets are
the issue's MB; a target whose baseline is missing fails."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.benchmarks import bench_report as report
from tests.benchmarks.bench_measure import (
    BASELINE,
    FAST_PATH,
    FLOOR,
    GATEWAY,
    IN_PROCESS,
    MODEL_SERVER,
    PIPELINE,
)
from tests.benchmarks.bench_memory import OLD_LAYOUT, POOL


def one_row(p50_ms: float, cpu: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "p50_ms": p50_ms,
        "p99_ms": 2 * p50_ms,
        "rows_per_s": 1000 / p50_ms,
        "cpu_ms_per_request": cpu or {},
    }


def last_run(scale: float = 1.0) -> dict[str, Any]:
    """Figures of the last full runs (README's Benchmarks), every time and CPU figure times
    `scale`."""

    def row(p50: float, cpu: dict[str, float] | None = None) -> dict[str, Any]:
        return one_row(p50 * scale, {k: v * scale for k, v in (cpu or {}).items()})

    big = {IN_PROCESS: 20.0, MODEL_SERVER: 28.0, GATEWAY: 30.0, BASELINE: 27.0, FLOOR: 29.0}
    return {
        "sequential": {
            IN_PROCESS: {1: row(1.47), 10_000: row(big[IN_PROCESS])},
            MODEL_SERVER: {1: row(2.97), 10_000: row(big[MODEL_SERVER])},
            GATEWAY: {
                1: row(2.53, {MODEL_SERVER: 1.79, "gateway": 0.64}),
                10_000: row(big[GATEWAY]),
            },
            BASELINE: {1: row(2.29, {BASELINE: 2.41}), 10_000: row(big[BASELINE])},
            FLOOR: {1: row(3.3, {FLOOR: 0.49}), 10_000: row(big[FLOOR])},
        },
        "fast_path": {FAST_PATH: row(1.80), PIPELINE: row(57.5)},
        "concurrency": {
            GATEWAY: {"clients": 16, "requests_per_s": 568 / scale, "errors": 0},
            BASELINE: {"clients": 16, "requests_per_s": 272 / scale, "errors": 0},
        },
        "pool": {"sizes": {1: {}, 2: {"clients": 16, "requests_per_s": 523 / scale}}},
    }


def verdicts(results: dict[str, Any]) -> dict[str, bool | None]:
    return {t["name"].split(" <=")[0].split(" >=")[0]: t["pass"] for t in report.targets(results)}


@pytest.mark.parametrize("scale", [1.0, 2.7])
def test_the_last_run_passes_on_a_machine_of_any_speed(scale: float) -> None:
    assert set(verdicts(last_run(scale)).values()) == {True}


def test_each_check_keeps_both_figures_beside_its_ratio() -> None:
    gateway_cpu = report.targets(last_run())[-1]
    assert gateway_cpu == {
        "name": f"CPU per one-row request, gateway / the floor <= {report.GATEWAY_CPU_VS_FLOOR:g}x",
        "value": round(0.64 / 0.49, 3),
        "unit": "x",
        "pass": True,
        "figures": "0.64 / 0.49 ms",
    }


@pytest.mark.parametrize(
    ("path", "group", "cpu_ms", "failed"),
    [
        (GATEWAY, "gateway", 1.32, "CPU per one-row request, gateway / the floor"),
        (
            GATEWAY,
            MODEL_SERVER,
            5.35,
            "CPU per one-row request, model server (via the gateway) / one-hop",
        ),
    ],
)
def test_a_regression_of_one_side_fails(path: str, group: str, cpu_ms: float, failed: str) -> None:
    results = last_run()
    results["sequential"][path][1]["cpu_ms_per_request"][group] = cpu_ms
    assert [name for name, ok in verdicts(results).items() if not ok] == [failed]


def test_a_fast_path_as_slow_as_the_pipeline_fails() -> None:
    results = last_run()
    results["fast_path"][FAST_PATH] = one_row(57.5)
    assert verdicts(results)["in-process single-row p50, fast path / fitted pipeline"] is False


def test_a_gateway_slower_than_the_floor_by_more_than_the_old_budget_fails() -> None:
    results = last_run()
    results["sequential"][GATEWAY][1]["p50_ms"] = 3.3 + 0.9  # the floor's p50, +0.9 ms
    assert verdicts(results)["one-client p50, gateway / the floor"] is False


def test_a_missing_baseline_fails_instead_of_passing() -> None:
    results = last_run()
    results["sequential"][FLOOR][1]["cpu_ms_per_request"] = {}
    check = report.targets(results)[-1]
    assert check["pass"] is False
    assert math.isnan(check["value"])


def memory(server_mb: float, cold_s: float, old_cold_s: float) -> dict[str, Any]:
    def layout(total: float, cold: float) -> dict[str, Any]:
        processes = [{"pid": 1, "role": "uvicorn", "rss_mb": total}]
        return {"cold_start_seconds": cold, "rss_mb": {"processes": processes, "total": total}}

    return {
        POOL: layout(server_mb, cold_s),
        OLD_LAYOUT: layout(550.0, old_cold_s),
        "artifact_mb": {"total": 3.2},
        "controller": {"rss_mb": 120.0, "idle_seconds": 10.0, "pid": 2},
    }


def test_memory_targets_are_the_issues_figures() -> None:
    today = report.memory_targets(memory(550.0, 11.0, 12.0))
    assert [(t["name"], t["value"], t["pass"]) for t in today] == [
        ("one model server's processes <= 400 MB RSS", 550.0, False),
        (
            "cold start (start -> first priced answer), pool's server / old layout <= 1/3",
            0.917,
            False,
        ),
        ("model artifact on disk (no threshold)", 3.2, None),
        ("rollout controller idle <= 150 MB RSS", 120.0, True),
    ]
    assert today[0]["figures"] == "uvicorn 550 MB; old layout 550 MB"
    assert today[1]["figures"] == "11.00 / 12.00 s"
    lean = report.memory_targets(memory(380.0, 3.9, 12.0))
    assert [t["pass"] for t in lean] == [True, True, None, True]


def test_failed_targets_print_as_fail_with_their_figures() -> None:
    checks = report.memory_targets(memory(550.0, 11.0, 12.0))
    lines = report.target_lines(checks)
    assert lines[0].split()[0] == "FAIL"
    assert lines[0].endswith("(uvicorn 550 MB; old layout 550 MB)")
    assert lines[2].split()[0] == "info"


def shadow(p50_every: list[float], cpu_every: float, errors: int = 0) -> dict[str, Any]:
    """The shadow's figures: none copied at 10 ms p50 in each window and 1 ms of gateway CPU a
    request."""

    def share(p50s: list[float], cpu: float, errors: int) -> dict[str, Any]:
        return {"clients": 16, "windows_p50_ms": p50s, "errors": errors,
                "gateway_cpu_ms_with_copies": cpu}  # fmt: skip

    return {"shares": {0: share([10.0] * 4, 1.0, 0), 1: share(p50_every, cpu_every, errors)}}


def test_copying_every_request_is_judged_against_copying_none() -> None:
    names = (
        "16 clients' p50, every request copied to a challenger / none <= 1.1x",
        "16 clients, gateway CPU per request, every request copied / none <= 1.6x",
    )
    within = report.shadow_targets(shadow([10.5, 10.9, 13.0, 10.7], 1.4))  # one busy window
    assert [(t["name"], t["value"], t["pass"]) for t in within] == [
        (names[0], 1.08, True),
        (names[1], 1.4, True),
    ]
    assert within[0]["figures"].startswith("windows: 10.5 / 10.0 ms, 10.9 / 10.0 ms")
    slower = report.shadow_targets(shadow([11.5] * 4, 1.7))
    assert [t["pass"] for t in slower] == [False, False]
    assert report.shadow_targets(shadow([10.0] * 4, 1.0, errors=3))[0]["pass"] is False
    assert report.shadow_targets(None) == []
