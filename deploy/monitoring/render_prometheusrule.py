"""Write prometheusrule.yaml (Prometheus Operator) from rules.yml, the source of truth.

Usage: ``python deploy/monitoring/render_prometheusrule.py [--check]``. With
``--check`` nothing is written and the exit status says whether the committed file is
current (the deploy tests run the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
TARGET = HERE / "prometheusrule.yaml"

HEADER = (
    "# GENERATED from rules.yml by render_prometheusrule.py: edit rules.yml, then\n"
    "# run `python deploy/monitoring/render_prometheusrule.py`.\n"
)


def render(rules_text: str) -> str:
    """Wrap plain Prometheus rule groups into a PrometheusRule custom resource.

    Args:
        rules_text: the YAML text of a Prometheus rules file (``groups: [...]``).

    Returns:
        The YAML text of a ``monitoring.coreos.com/v1`` PrometheusRule.

    Raises:
        ValueError: if the rules file has no ``groups`` list.
    """
    rules: Any = yaml.safe_load(rules_text)
    if not isinstance(rules, dict) or not isinstance(rules.get("groups"), list):
        raise ValueError(
            f"{RULES} must hold a mapping with a 'groups' list, got "
            f"{type(rules).__name__}; fix the rules file first (promtool check rules)"
        )
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "equiserve",
            # the label most Prometheus Operator installs select rules by
            "labels": {"prometheus": "k8s", "role": "alert-rules"},
        },
        "spec": {"groups": rules["groups"]},
    }
    return HEADER + yaml.safe_dump(resource, sort_keys=False, width=88)


def main() -> int:
    """Entry point: write or check the generated file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args()

    text = render(RULES.read_text())
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
