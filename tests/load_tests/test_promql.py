"""The PromQL metric extractor and the scrape checker."""

from __future__ import annotations

import pytest

from load_tests.promql import (
    PromQLError,
    Selector,
    check_expressions,
    dashboard_expressions,
    exported_series,
    selectors,
)

SCRAPE = """\
# HELP req_seconds Request time.
# TYPE req_seconds histogram
req_seconds_bucket{backend="fused",le="0.1"} 1.0
req_seconds_bucket{backend="fused",le="+Inf"} 2.0
req_seconds_count{backend="fused"} 2.0
req_seconds_sum{backend="fused"} 0.3
# HELP done_total Done.
# TYPE done_total counter
done_total{model="m",backend="fused"} 5.0
# HELP never_seen Labelled, never observed.
# TYPE never_seen gauge
"""


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", [Selector("up", frozenset())]),
        (
            "histogram_quantile(0.99, sum by (backend, le) (rate(req_seconds_bucket"
            '{backend=~"$backend",method="Predict"}[$__rate_interval])))',
            [Selector("req_seconds_bucket", frozenset({"backend", "method"}))],
        ),
        (
            "sum(rate(a_total[5m] offset 1h)) by (code) / on (model) "
            "group_left (backend) b",
            [Selector("a_total", frozenset()), Selector("b", frozenset())],
        ),
        (
            "deriv(sum(pending)[30m:1m]) > 0 and sum(pending) > 0",
            [Selector("pending", frozenset())] * 2,
        ),
        (
            "count without (instance) (x) unless y",
            [Selector("x", frozenset()), Selector("y", frozenset())],
        ),
        ('label_replace(x, "dst", "$1", "src", "(.*)")', [Selector("x", frozenset())]),
    ],
)
def test_selectors_find_metric_names_and_matched_labels(expr, expected):
    assert selectors(expr) == expected


def test_a_selector_without_a_name_cannot_be_checked():
    with pytest.raises(PromQLError, match="without a metric name"):
        selectors('{__name__=~"equiserve_.*"}')


def test_exported_series_expand_histograms_and_counters():
    exported = exported_series(SCRAPE)
    assert exported["req_seconds_bucket"] == frozenset({"backend", "le"})
    assert exported["req_seconds_count"] == frozenset({"backend"})
    assert exported["done_total"] == frozenset({"model", "backend"})
    assert exported["never_seen"] is None


def test_check_reports_missing_metrics_and_labels_only():
    problems = check_expressions(
        [
            ("ok", "sum by (backend) (rate(req_seconds_count[5m]))"),
            ("ok too", 'never_seen{anything="x"} or up{job="a"}'),
            ("missing", "rate(done[5m])"),
            ("label", 'done_total{tenant="a"}'),
            ("recorded", "backend:req:p99 > 1"),
            ("constant", "vector(1)"),
        ],
        exported_series(SCRAPE),
        recorded=["backend:req:p99"],
    )
    assert [(p.where, p.message.split(" ")[0]) for p in problems] == [
        ("missing", "metric"),
        ("label", "done_total"),
        ("constant", "reads"),
    ]


def test_dashboard_expressions_include_panel_targets_and_label_values():
    dashboard = {
        "panels": [
            {"title": "row", "panels": [{"title": "p", "targets": [{"expr": "a"}]}]},
        ],
        "templating": {
            "list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                {"name": "m", "type": "query", "query": "label_values(b, model)"},
                {
                    "name": "k",
                    "type": "query",
                    "query": {"query": 'label_values(c{x="1"}, backend)'},
                },
            ]
        },
    }
    found = dict(dashboard_expressions(dashboard))
    assert found["panel 'p'"] == "a"
    assert selectors(found["variable 'm'"]) == [Selector("b", frozenset({"model"}))]
    assert selectors(found["variable 'k'"]) == [
        Selector("c", frozenset({"x", "backend"}))
    ]
