"""Alert rules, the Grafana dashboard, and the metrics they read.

``promtool`` checks the rules and runs their unit tests; the generated files are
current; every PromQL expression of the dashboard and the rules names a series (and
labels) that a live scrape of the platform's real metrics code exports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from load_tests.promql import (
    check_expressions,
    dashboard_expressions,
    exported_series,
    recorded_names,
    rule_expressions,
    selectors,
)

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "equiserve.json"
RULES = MONITORING / "rules.yml"


def _promtool() -> str:
    import shutil

    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH; install it: apt-get install -y prometheus "
            "(.ci/run installs it when missing)"
        )
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_accepts_the_rules():
    result = _run([_promtool(), "check", "rules", "rules.yml"], MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass():
    result = _run([_promtool(), "test", "rules", "rules_test.yml"], MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_fails_a_broken_rule(tmp_path):
    broken = yaml.safe_load(RULES.read_text())
    broken["groups"][1]["rules"][0]["expr"] = "sum(rate(x[5m]) by"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(broken))
    result = _run([_promtool(), "check", "rules", "rules.yml"], tmp_path)
    assert result.returncode != 0


@pytest.mark.parametrize(
    "script",
    ["render_prometheusrule.py", "dashboards/build_dashboard.py"],
)
def test_generated_files_are_current(script):
    result = _run([sys.executable, str(MONITORING / script), "--check"], REPO)
    assert result.returncode == 0, result.stderr


def test_dashboard_covers_what_operators_watch():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("structures/s", "atoms/s", "p50 / p95 / p99", "atoms per batch",
                   "queue depth", "campaign progress", "errors by grpc code",
                   "replicas", "gpu memory"):  # fmt: skip
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def _scrape_of_the_real_metrics_code() -> str:
    """Drive the serving and campaign metrics and scrape them over HTTP.

    The gateway's registry as ``services.serve_main`` builds it: the serving metrics
    (services.metrics) plus the campaign collector (services.scheduler.metrics),
    here fed by a stand-in for the store's totals.
    """
    from services.metrics import BatchFigures, ServingMetrics
    from services.scheduler.metrics import CampaignCollector

    metrics = ServingMetrics([("sevennet-0", "fused")])
    totals = [("running", 1, 40, 50, 2), ("completed", 3, 0, 900, 10)]
    metrics.registry.register(CampaignCollector(lambda: totals))
    metrics.observe_request("sevennet-0", "fused", "Predict", 0.02)
    metrics.observe_error("sevennet-0", "fused", grpc.StatusCode.INTERNAL)
    metrics.observe_structure("sevennet-0", "fused", n_atoms=8, queue_wait_s=0.001)
    metrics.observe_batch(
        "sevennet-0", "fused", BatchFigures("b1", 1, 8, 0.01, gpu_memory_bytes=1024)
    )
    metrics.in_flight.labels("sevennet-0", "fused").set(0)
    metrics.set_replicas("sevennet-0", "fused", 1)
    server, port = metrics.start_http("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    finally:
        server.shutdown()


def _all_expressions() -> tuple[list[tuple[str, str]], list[str]]:
    rules: Any = yaml.safe_load(RULES.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(rule_expressions(rules)) + list(dashboard_expressions(dashboard))
    return exprs, recorded_names(rules)


def test_every_promql_expression_reads_a_live_exported_metric():
    exported = exported_series(_scrape_of_the_real_metrics_code())
    exprs, recorded = _all_expressions()
    problems = check_expressions(exprs, exported, recorded)
    assert not problems, "\n".join(f"{p.where}: {p.message}" for p in problems)

    # every exported family is shown or alerted on somewhere
    read = {s.metric for _, e in exprs for s in selectors(e)}
    families = {name.removesuffix("_bucket") for name in read}
    for family in ("equiserve_campaigns", "equiserve_campaign_structures_pending",
                   "equiserve_gpu_memory_bytes", "equiserve_batch_atoms"):  # fmt: skip
        assert family in families


def test_the_live_check_catches_a_renamed_metric_and_a_wrong_label():
    exported = exported_series(_scrape_of_the_real_metrics_code())
    problems = check_expressions(
        [
            ("renamed", "rate(equiserve_structures_total[5m])"),
            ("bad label", 'equiserve_replicas{tenant="x"}'),
        ],
        exported,
    )
    assert [p.where for p in problems] == ["renamed", "bad label"]
