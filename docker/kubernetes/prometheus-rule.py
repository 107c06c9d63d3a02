"""Print the PrometheusRule holding the groups of docker/prometheus/alerts.yml, the rules the
compose Prometheus loads (`make kubernetes-rules` writes it to base/prometheus-rule.yaml)."""

import sys
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "prometheus" / "alerts.yml"


def block_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """Multi-line strings (PromQL, descriptions) as `|` blocks, as in the rules file."""
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    )


yaml.SafeDumper.add_representer(str, block_text)
rule = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "property-friends", "labels": {"release": "kube-prometheus-stack"}},
    "spec": {"groups": yaml.safe_load(RULES.read_text())["groups"]},
}
print("# Written by `make kubernetes-rules` from docker/prometheus/alerts.yml: edit that file.")
yaml.safe_dump(rule, sys.stdout, sort_keys=False, width=100)
