"""Write equiserve.json, the Grafana dashboard, from the panel list below.

Usage: ``python deploy/monitoring/dashboards/build_dashboard.py [--check]``. The
dashboard is generated so that its PromQL stays readable and reviewable here; the
deploy tests fail while the committed JSON differs from what this script writes, and
check every expression against a live scrape of the platform.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent / "equiserve.json"

# label filter applied to every per-model/backend series
SEL = 'model=~"$model",backend=~"$backend"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """One time-series panel: a title, a unit and its PromQL targets (expr, legend)."""

    title: str
    unit: str
    targets: tuple[tuple[str, str], ...]
    description: str = ""
    width: int = 12
    stack: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def quantile(q: float, metric: str, by: str, extra_sel: str = "") -> str:
    """PromQL for the q-quantile of a histogram, aggregated by the given labels."""
    sel = SEL + extra_sel
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate({metric}_bucket{{{sel}}}[{RATE}])))"
    )


def mean(metric: str, by: str) -> str:
    """PromQL for the mean observation of a histogram over the rate window."""
    return (
        f"sum by ({by}) (rate({metric}_sum{{{SEL}}}[{RATE}])) / "
        f"sum by ({by}) (rate({metric}_count{{{SEL}}}[{RATE}]))"
    )


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Throughput",
        (
            Panel(
                "Structures/s per model and backend",
                "ops",
                (
                    (
                        "sum by (model, backend) (rate("
                        f"equiserve_structures_processed_total{{{SEL}}}[{RATE}]))",
                        "{{model}} / {{backend}}",
                    ),
                ),
                "Structures evaluated per second (Predict, PredictStream, campaigns).",
            ),
            Panel(
                "Atoms/s per model and backend",
                "ops",
                (
                    (
                        "sum by (model, backend) (rate("
                        f"equiserve_atoms_processed_total{{{SEL}}}[{RATE}]))",
                        "{{model}} / {{backend}}",
                    ),
                ),
                "Atoms evaluated per second: the fair comparison across sizes.",
            ),
        ),
    ),
    (
        "Latency",
        (
            Panel(
                "Predict latency p50 / p95 / p99 per backend",
                "s",
                tuple(
                    (
                        quantile(
                            q,
                            "equiserve_request_duration_seconds",
                            "backend",
                            ',method="Predict"',
                        ),
                        f"p{round(q * 100)} {{{{backend}}}}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
                "End-to-end latency of unary Predict calls, gateway to gateway.",
                width=24,
            ),
            Panel(
                "Queue wait p50 / p99 per backend",
                "s",
                tuple(
                    (
                        quantile(q, "equiserve_queue_wait_seconds", "backend"),
                        f"p{round(q * 100)} {{{{backend}}}}",
                    )
                    for q in (0.5, 0.99)
                ),
                "Time a structure waits for its batch to start.",
            ),
            Panel(
                "Batch compute p50 / p99 per backend",
                "s",
                tuple(
                    (
                        quantile(q, "equiserve_batch_compute_seconds", "backend"),
                        f"p{round(q * 100)} {{{{backend}}}}",
                    )
                    for q in (0.5, 0.99)
                ),
                "Model time per packed batch.",
            ),
        ),
    ),
    (
        "Batching and queues",
        (
            Panel(
                "Atoms per batch (mean, p90)",
                "short",
                (
                    (
                        mean("equiserve_batch_atoms", "model, backend"),
                        "mean {{model}} / {{backend}}",
                    ),
                    (
                        quantile(0.9, "equiserve_batch_atoms", "model, backend"),
                        "p90 {{model}} / {{backend}}",
                    ),
                ),
                "How full the batches are; compare with the configured atom budget.",
                width=8,
            ),
            Panel(
                "Structures per batch (mean)",
                "short",
                (
                    (
                        mean("equiserve_batch_structures", "model, backend"),
                        "{{model}} / {{backend}}",
                    ),
                ),
                width=8,
            ),
            Panel(
                "Queue depth (requests in flight)",
                "short",
                (
                    (
                        "sum by (model, backend) "
                        f"(equiserve_requests_in_flight{{{SEL}}})",
                        "{{model}} / {{backend}}",
                    ),
                ),
                "Requests accepted and not yet answered: queued plus computing.",
                width=8,
            ),
        ),
    ),
    (
        "Campaigns",
        (
            Panel(
                "Campaign progress",
                "short",
                (
                    (
                        "sum(rate(equiserve_campaign_structures_completed_total"
                        f"[{RATE}]))",
                        "done/s",
                    ),
                    ("sum(equiserve_campaign_structures_pending)", "pending"),
                ),
                "Structures finished per second and structures still waiting, "
                "over all campaigns.",
            ),
            Panel(
                "Campaigns by state",
                "short",
                (("sum by (state) (equiserve_campaigns)", "{{state}}"),),
                stack=True,
            ),
        ),
    ),
    (
        "Errors and capacity",
        (
            Panel(
                "Errors by gRPC code",
                "reqps",
                (
                    (
                        "sum by (code) (rate("
                        f"equiserve_request_errors_total{{{SEL}}}[{RATE}]))",
                        "{{code}}",
                    ),
                ),
                "Failed calls per second by status code (client and server errors).",
                width=8,
                stack=True,
            ),
            Panel(
                "Replicas",
                "short",
                (
                    (
                        f"sum by (model, backend) (equiserve_replicas{{{SEL}}})",
                        "{{model}} / {{backend}}",
                    ),
                ),
                "Running Serve replicas per deployment (autoscaled).",
                width=8,
            ),
            Panel(
                "GPU memory",
                "bytes",
                (
                    (
                        "sum by (model, backend) "
                        f"(equiserve_gpu_memory_bytes{{{SEL}}})",
                        "{{model}} / {{backend}}",
                    ),
                ),
                "Device memory held by the replicas (empty on CPU-only clusters).",
                width=8,
            ),
        ),
    ),
)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    """The Grafana JSON of one time-series panel at grid position (x, y)."""
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "custom": {"stacking": {"mode": "normal" if panel.stack else "none"}},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.targets)
        ],
        **panel.extra,
    }


def _variables() -> list[dict[str, Any]]:
    """Template variables: the data source, then model and backend filters."""
    ds = {"type": "prometheus", "uid": "${datasource}"}
    return [
        {"name": "datasource", "type": "datasource", "query": "prometheus"},
        {
            "name": "model",
            "type": "query",
            "datasource": ds,
            "query": "label_values(equiserve_replicas, model)",
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "allValue": ".*",
            "refresh": 2,
        },
        {
            "name": "backend",
            "type": "query",
            "datasource": ds,
            "query": 'label_values(equiserve_replicas{model=~"$model"}, backend)',
            "includeAll": True,
            "multi": True,
            "current": {"text": "All", "value": "$__all"},
            "allValue": ".*",
            "refresh": 2,
        },
    ]


def build() -> dict[str, Any]:
    """The whole dashboard as a JSON-ready dict (rows laid out top to bottom)."""
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row_title, row_panels in ROWS:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
                "panels": [],
            }
        )
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": "equiserve-overview",
        "title": "equiserve",
        "description": "Throughput, latency, batching, campaigns and errors "
        "per model and tensor-product backend.",
        "tags": ["equiserve"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "utc",
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    """The dashboard JSON text exactly as committed."""
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    """Entry point: write or check equiserve.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
