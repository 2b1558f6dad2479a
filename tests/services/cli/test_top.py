"""``equiserve top``: rates and percentiles from two scrapes of the real metrics."""

from __future__ import annotations

import argparse
import io
import math

import grpc
import pytest
from prometheus_client import generate_latest

from services.cli.top import bucket_quantile, parse_scrape, render, rows, run
from services.metrics import BatchFigures, ServingMetrics

PAIRS = [("sevennet-0", "fused"), ("sevennet-0", "e3nn")]


def _snapshot(metrics: ServingMetrics, t: float):
    return parse_scrape(generate_latest(metrics.registry).decode(), t)


def test_bucket_quantile_interpolates_like_prometheus():
    buckets = [(0.1, 10.0), (0.2, 30.0), (float("inf"), 40.0)]
    assert bucket_quantile(0.25, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.15)
    assert bucket_quantile(0.99, buckets) == 0.2  # in +Inf: the highest finite bound
    assert math.isnan(bucket_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]))
    with pytest.raises(ValueError, match="quantile"):
        bucket_quantile(1.5, buckets)


def test_rows_give_rates_and_latency_of_the_interval_only():
    metrics = ServingMetrics(PAIRS)
    # before the first scrape: slow calls that must not count in the interval
    for _ in range(10):
        metrics.observe_request("sevennet-0", "fused", "Predict", 50.0)
    old = _snapshot(metrics, 100.0)

    for _ in range(20):
        metrics.observe_request("sevennet-0", "fused", "Predict", 0.004)
        metrics.observe_structure("sevennet-0", "fused", n_atoms=64, queue_wait_s=0.002)
    metrics.observe_error("sevennet-0", "fused", grpc.StatusCode.RESOURCE_EXHAUSTED)
    metrics.observe_batch("sevennet-0", "fused", BatchFigures("b", 20, 1280, 0.1))
    metrics.set_replicas("sevennet-0", "fused", 2)
    metrics.set_replicas("sevennet-0", "e3nn", 1)
    new = _snapshot(metrics, 110.0)

    table = {(r.model, r.backend): r for r in rows(old, new)}
    fused = table[("sevennet-0", "fused")]
    assert fused.structures_per_s == pytest.approx(2.0)
    assert fused.atoms_per_s == pytest.approx(128.0)
    assert fused.calls_per_s == pytest.approx(2.0)
    assert fused.errors_per_s == pytest.approx(0.1)
    assert 2.5 < fused.p50_ms <= 5.0 and fused.p99_ms <= 5.0
    assert fused.mean_batch_atoms == pytest.approx(1280)
    assert fused.replicas == 2
    idle = table[("sevennet-0", "e3nn")]
    assert idle.structures_per_s == 0 and math.isnan(idle.p50_ms)
    assert "fused" in render(list(table.values()), 10.0)


def test_a_restarted_gateway_counts_from_zero():
    before = ServingMetrics(PAIRS)
    for _ in range(100):
        before.observe_structure("sevennet-0", "fused", n_atoms=8, queue_wait_s=0.0)
    after = ServingMetrics(PAIRS)
    for _ in range(5):
        after.observe_structure("sevennet-0", "fused", n_atoms=8, queue_wait_s=0.0)
    (row,) = rows(_snapshot(before, 0.0), _snapshot(after, 5.0))
    assert row.structures_per_s == pytest.approx(1.0)


def test_top_reads_a_live_metrics_endpoint():
    metrics = ServingMetrics(PAIRS)
    metrics.set_replicas("sevennet-0", "fused", 1)
    server, port = metrics.start_http("127.0.0.1", 0)
    try:
        out = io.StringIO()
        args = argparse.Namespace(
            metrics_url=f"http://127.0.0.1:{port}/metrics", interval=0.05, iterations=2
        )
        assert run(args, out) == 0
    finally:
        server.shutdown()
    text = out.getvalue()
    assert text.count("equiserve top") == 2 and "sevennet-0" in text


def test_top_names_the_url_it_cannot_reach():
    args = argparse.Namespace(
        metrics_url="http://127.0.0.1:9/metrics", interval=0.05, iterations=1
    )
    with pytest.raises(OSError, match=r"127\.0\.0\.1:9/"):
        run(args, io.StringIO())
