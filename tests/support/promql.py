"""What the dashboard and the alerting rules may query: the metric families the project
defines (read from its sources), the sample names Prometheus stores for them, the metric
names a PromQL expression uses, and the Grafana variables a dashboard query may hold."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from config.settings import PROJECT_DIR

# The modules that create metrics: the gateway's, and the rollout controller's
# (model_rollouts_total).
METRIC_SOURCES = (PROJECT_DIR / "gateway" / "metrics.py", PROJECT_DIR / "serving" / "controller.py")
# Grafana fills these in before a query reaches Prometheus; tests put in typical values.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "1h"}
PROMQL_WORDS = {
    *("sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk"),
    *("quantile", "count_values", "by", "without", "on", "ignoring", "group_left"),
    *("group_right", "and", "or", "unless", "offset", "bool", "inf", "nan"),
}


def metric_families(*sources: Path) -> dict[str, str]:
    """{name: type} of the metrics created in each source file: `Counter("name", ...)`, or
    `counter("name", ...)` through a partial of the class."""
    families = {}
    for source in sources or METRIC_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id.capitalize() in {"Counter", "Gauge", "Histogram", "Summary"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                families[node.args[0].value] = node.func.id.capitalize()
    return families


def exposed_names(name: str, kind: str) -> set[str]:
    """The sample names Prometheus stores for a metric family (multiprocess mode: no
    `_created`)."""
    if kind == "Counter":
        return {name.removesuffix("_total") + "_total"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    if kind == "Summary":
        return {name, f"{name}_count", f"{name}_sum"}
    return {name}


def known_names() -> set[str]:
    """Every sample name the project's metrics expose (the live-accuracy gauges included,
    which the gateway reads from the prediction store), and Prometheus' own `up`."""
    from gateway.outcomes import LIVE_GAUGES

    return {"up", *LIVE_GAUGES} | {
        sample
        for family, kind in metric_families().items()
        for sample in exposed_names(family, kind)
    }


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names, label values, durations or Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', with_grafana_values(expr))
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\boffset\s+-?\w+", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def with_grafana_values(expr: str) -> str:
    """`expr` as Grafana sends it to Prometheus, its variables filled in."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr
