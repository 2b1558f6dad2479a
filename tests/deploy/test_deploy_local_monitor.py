"""``make monitor``: the local Prometheus config is valid and scrapes /metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from services.metrics import ServingMetrics

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "monitor.sh"
# Prometheus shows a target's first sample ~6 s after start (scraping every second).
FIRST_SAMPLE_TIMEOUT_S = 40.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(tmp_path: Path, metrics_port: int, prom_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "EQUISERVE_STATE_DIR": str(tmp_path),
        "EQUISERVE_METRICS_PORT": str(metrics_port),
        "PROMETHEUS_PORT": str(prom_port),
    }


def test_generated_config_passes_promtool(tmp_path):
    result = subprocess.run(
        [str(SCRIPT), "--check"],
        env=_env(tmp_path, 9464, 9090),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "prometheus" / "prometheus.yml").read_text()
    assert '"127.0.0.1:9464"' in config and "rules.yml" in config


def _query(prom_port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}
    )
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.loads(response.read())["data"]["result"])
    except OSError:
        return []


def test_local_prometheus_scrapes_the_platform_metrics(tmp_path):
    metrics = ServingMetrics([("sevennet-0", "fused")])
    metrics.set_replicas("sevennet-0", "fused", 1)
    server, metrics_port = metrics.start_http("127.0.0.1", 0)
    prom_port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [str(SCRIPT)],
        env=_env(tmp_path, metrics_port, prom_port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + FIRST_SAMPLE_TIMEOUT_S
        found: list[dict] = []
        while time.monotonic() < deadline and not found:
            time.sleep(1.0)
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            found = _query(prom_port, 'equiserve_replicas{job="equiserve"}')
        assert found, "no sample of equiserve_replicas within the timeout"
        assert found[0]["metric"]["backend"] == "fused"
        assert found[0]["value"][1] == "1"
        # its own data dir, under the state dir
        assert (tmp_path / "prometheus" / "data").is_dir()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.shutdown()


@pytest.fixture(autouse=True)
def _needs_prometheus():
    import shutil

    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: apt-get install -y prometheus")


@pytest.mark.slow
def test_report_queries_the_local_prometheus(tmp_path):
    import threading

    from services.cli.report import from_prometheus

    metrics = ServingMetrics([("sevennet-0", "fused")])
    server, metrics_port = metrics.start_http("127.0.0.1", 0)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            metrics.observe_request("sevennet-0", "fused", "Predict", 0.02)
            metrics.observe_structure("sevennet-0", "fused", 8, 0.001)
            time.sleep(0.02)

    worker = threading.Thread(target=load)
    worker.start()
    prom_port = _free_port()
    proc = subprocess.Popen(
        [str(SCRIPT)],
        env=_env(tmp_path, metrics_port, prom_port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        start = time.time()
        time.sleep(25.0)  # first sample after ~6 s, then enough for rate()
        series = from_prometheus(f"http://127.0.0.1:{prom_port}", start, time.time())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        stop.set()
        worker.join()
        server.shutdown()
    rates = [v for _, v in series["structures_per_s"]["sevennet-0/fused"]]
    assert rates and 5 < rates[-1] < 60
    p50 = series["latency_p50_s"]["fused"][-1][1]
    assert 0.01 <= p50 <= 0.025  # inside the 10-25 ms bucket
