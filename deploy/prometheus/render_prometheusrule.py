"""Write deploy/k8s/base/prometheusrule.yaml: alerts.yaml's groups wrapped in a PrometheusRule.

    python deploy/prometheus/render_prometheusrule.py          # rewrite the file
    python deploy/prometheus/render_prometheusrule.py --check  # exit 1 if it is out of date

alerts.yaml stays the one source (promtool checks and unit-tests it); the Prometheus Operator
needs the same rules as a custom resource, and kustomize cannot read files outside the base.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "alerts.yaml"
TARGET = HERE.parent / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/render_prometheusrule.py:
# edit alerts.yaml (and alerts_test.yaml), then re-run the script. A test checks they match.
# The `release` label must match your Prometheus' ruleSelector (kube-prometheus-stack: the Helm
# release name).
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as in alerts.yaml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(SOURCE.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "voice-gateway",
            "labels": {
                "app.kubernetes.io/name": "voice-gateway",
                "app.kubernetes.io/component": "gateway",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
