"""Every PromQL expression of the Grafana dashboard and the alert rules reads series
that the running gateway really exports: a live scrape after real gRPC traffic
through the local Ray Serve (the serving tests' ``ray_gateway``).

The offline twin in ``tests/deploy/test_deploy_monitoring.py`` drives the metrics
code directly; this one goes through the whole serving path.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from load_tests.promql import (
    check_expressions,
    dashboard_expressions,
    exported_series,
    recorded_names,
    rule_expressions,
)
from services.client import EquiserveClient
from tests.services.serving_helpers import API_KEY, GatewayThread, small_structures

pytestmark = pytest.mark.ray

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
# Exported by the campaign hook (services.scheduler.metrics), which this fixture's
# gateway does not run: checked offline in tests/deploy and live by
# `python -m load_tests.run_local` against the whole platform.
CAMPAIGN_METRICS = (
    "equiserve_campaign_structures_pending",
    "equiserve_campaign_structures_completed_total",
    "equiserve_campaigns",
)


def test_dashboard_and_rules_read_what_the_live_gateway_exports(
    ray_gateway: GatewayThread,
):
    with EquiserveClient(ray_gateway.address, api_key=API_KEY, timeout=120) as client:
        client.predict(small_structures()[:2])
        with pytest.raises(grpc.RpcError):
            client.predict(small_structures()[:1], model="no-such-model")
    with urllib.request.urlopen(ray_gateway.metrics_url, timeout=10) as reply:
        exported = exported_series(reply.read().decode())

    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    dashboard = json.loads((MONITORING / "dashboards" / "equiserve.json").read_text())
    expressions = [*rule_expressions(rules), *dashboard_expressions(dashboard)]
    problems = check_expressions(expressions, exported, recorded_names(rules))

    campaign = [p for p in problems if any(m in p.message for m in CAMPAIGN_METRICS)]
    real = [p for p in problems if p not in campaign]
    assert not real, "\n".join(f"{p.where}: {p.message}" for p in real)
    # the traffic above produced labelled samples, so labels were really checked
    assert exported["equiserve_request_duration_seconds_bucket"]
    assert "code" in (exported["equiserve_request_errors_total"] or ())
