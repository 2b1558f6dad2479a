"""``equiserve report``: series from scrapes or from Prometheus, plotted as PNG."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from services.cli.report import from_prometheus, from_samples, plot
from services.metrics import ServingMetrics


def test_sampled_series_follow_the_load(tmp_path):
    metrics = ServingMetrics([("sevennet-0", "fused")])
    server, port = metrics.start_http("127.0.0.1", 0)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            metrics.observe_request("sevennet-0", "fused", "Predict", 0.01)
            metrics.observe_structure("sevennet-0", "fused", 8, 0.001)
            time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        series, progress = from_samples(
            f"http://127.0.0.1:{port}/metrics", interval_s=0.2, duration_s=1.0
        )
    finally:
        stop.set()
        worker.join()
        server.shutdown()
    rates = [v for _, v in series["structures_per_s"]["sevennet-0/fused"]]
    assert len(rates) >= 3 and all(10 < r < 120 for r in rates)
    assert series["latency_p50_s"]["fused"][0][1] == pytest.approx(0.01, rel=0.5)
    assert progress == []

    plot(tmp_path, series, [[0, 0, 0], [1, 10, 0]], "test")
    for name in ("throughput.png", "latency.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


class _FakePrometheus(BaseHTTPRequestHandler):
    queries: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        params = parse_qs(urlparse(self.path).query)
        self.queries.append(params["query"][0])
        start = float(params["start"][0])
        body = {
            "status": "success",
            "data": {
                "resultType": "matrix",
                "result": [
                    {
                        "metric": {"model": "sevennet-0", "backend": "fused"},
                        "values": [[start + 10, "2.5"], [start + 20, "NaN"]],
                    }
                ],
            },
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_prometheus_range_queries_are_parsed_per_backend():
    server = HTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        series = from_prometheus(url, 1000.0, 1600.0)
    finally:
        server.shutdown()
        thread.join()
    assert series["structures_per_s"] == {"sevennet-0/fused": [[10.0, 2.5]]}
    assert set(series) == {"structures_per_s", "atoms_per_s", "latency_p50_s",
                           "latency_p95_s", "latency_p99_s"}  # fmt: skip
    assert any("histogram_quantile(0.99" in q for q in _FakePrometheus.queries)
    with pytest.raises(ValueError, match="end > start"):
        from_prometheus(url, 10.0, 5.0)
