#!/usr/bin/env python3
"""Writes deploy/kubernetes/base/prometheusrule.yaml: a PrometheusRule whose groups are exactly
config/prometheus/alerts.yml's, so Kubernetes and docker-compose alert on the same rules.

    python scripts/render-prometheusrule.py          # rewrite the file after editing alerts.yml
    python scripts/render-prometheusrule.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
TARGET = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from config/prometheus/alerts.yml by scripts/render-prometheusrule.py: edit alerts.yml\n"
    "# and run the script (a test fails while the two differ).\n"
)


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # multi-line expressions and descriptions stay readable as literal blocks
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render() -> str:
    with open(ALERTS, encoding="utf-8") as handle:
        groups: list[dict[str, Any]] = yaml.safe_load(handle)["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "inference", "labels": {"app.kubernetes.io/name": "inference"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(
                f"{TARGET.relative_to(ROOT)} is out of date: run scripts/render-prometheusrule.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
