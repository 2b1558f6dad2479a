"""``equiserve top``: live throughput and latency per model and backend in a terminal.

Reads the gateway's Prometheus endpoint (``/metrics``) directly, with no Prometheus
server: two scrapes ``--interval`` seconds apart give rates (structures/s, atoms/s,
calls/s, errors/s) and latency percentiles of the calls in between (from the
histogram buckets, interpolated as Prometheus' ``histogram_quantile`` does).

::

    equiserve top [--metrics-url http://127.0.0.1:9464/metrics] [--interval 2]
                  [--iterations N]

The parsing and rate helpers here are shared with ``equiserve report``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_METRICS_URL = "http://127.0.0.1:9464/metrics"
PREFIX = "equiserve_"
Key = tuple[str, str]  # (model, backend)


@dataclass(frozen=True)
class Snapshot:
    """One scrape: sample values by (series name, sorted label pairs), and its time.

    Attributes:
        time_s: ``time.monotonic()`` when the scrape finished, s.
        samples: ``(name, ((label, value), ...)) -> value``.
    """

    time_s: float
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of one series name with its labels."""
        return [
            (dict(labels), value)
            for (sample, labels), value in self.samples.items()
            if sample == name
        ]


@dataclass(frozen=True)
class BackendRow:
    """What ``top`` shows for one (model, backend) over one interval."""

    model: str
    backend: str
    structures_per_s: float
    atoms_per_s: float
    calls_per_s: float
    errors_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    queue_wait_p50_ms: float
    mean_batch_atoms: float
    in_flight: float
    replicas: float
    gpu_memory_bytes: float


def parse_scrape(text: str, time_s: float) -> Snapshot:
    """Parse a Prometheus text exposition, keeping the ``equiserve_`` series.

    Raises:
        ValueError: if the text is not a Prometheus exposition.
    """
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(PREFIX):
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = float(sample.value)
    return Snapshot(time_s, samples)


def scrape(url: str, timeout_s: float = 5.0) -> Snapshot:
    """GET ``url`` and parse it.

    Raises:
        OSError: if the endpoint cannot be reached (the message names the URL).
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode()
    except OSError as err:
        raise OSError(
            f"cannot read metrics from {url} ({err}); is the gateway running, and "
            "is EQUISERVE_METRICS_PORT the port in the URL?"
        ) from err
    return parse_scrape(text, time.monotonic())


def _sum_by(snap: Snapshot, name: str, extra: tuple[str, ...] = ()) -> dict:
    """Sum samples of ``name`` by (model, backend) plus the ``extra`` labels."""
    out: dict = defaultdict(float)
    for labels, value in snap.series(name):
        key: tuple[str, ...] = (labels.get("model", ""), labels.get("backend", ""))
        out[key + tuple(labels.get(e, "") for e in extra)] += value
    return out


def counter_rates(
    old: Snapshot, new: Snapshot, name: str, extra: tuple[str, ...] = ()
) -> dict:
    """Per-second increase of a counter between two scrapes, by (model, backend).

    A counter that went down (a restarted process) counts from zero, as
    Prometheus' ``rate`` does.
    """
    dt = new.time_s - old.time_s
    if dt <= 0:
        raise ValueError(f"scrapes must be in time order, got dt = {dt} s")
    before, after = _sum_by(old, name, extra), _sum_by(new, name, extra)
    rates = {}
    for key, value in after.items():
        start = before.get(key, 0.0)
        rates[key] = (value - start if value >= start else value) / dt
    return rates


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The q-quantile of a histogram from cumulative ``(le, count)`` buckets.

    Linear interpolation inside the bucket, as Prometheus' ``histogram_quantile``;
    NaN when there are no observations; the highest finite bound when the quantile
    falls in the ``+Inf`` bucket.

    Raises:
        ValueError: if ``q`` is outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {q}")
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    rank = q * ordered[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def histogram_delta_quantile(
    old: Snapshot, new: Snapshot, name: str, q: float, where: Mapping[str, str]
) -> dict[Key, float]:
    """The q-quantile of the observations made between two scrapes, per key.

    Args:
        name: histogram name without ``_bucket``.
        where: label values a sample must have (e.g. ``{"method": "Predict"}``).
    """
    deltas: dict[Key, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    before = dict(old.samples)
    for (sample, labels), value in new.samples.items():
        if sample != f"{name}_bucket":
            continue
        lab = dict(labels)
        if any(lab.get(k) != v for k, v in where.items()):
            continue
        start = before.get((sample, labels), 0.0)
        key = (lab.get("model", ""), lab.get("backend", ""))
        deltas[key][float(lab["le"])] += value - start if value >= start else value
    return {
        key: bucket_quantile(q, list(buckets.items()))
        for key, buckets in deltas.items()
    }


def rows(old: Snapshot, new: Snapshot) -> list[BackendRow]:
    """One row per (model, backend) seen in the newer scrape."""
    structures = counter_rates(old, new, "equiserve_structures_processed_total")
    atoms = counter_rates(old, new, "equiserve_atoms_processed_total")
    calls = counter_rates(old, new, "equiserve_request_duration_seconds_count")
    errors = counter_rates(old, new, "equiserve_request_errors_total")
    batches = counter_rates(old, new, "equiserve_batch_atoms_count")
    batch_atoms = counter_rates(old, new, "equiserve_batch_atoms_sum")
    predict = {"method": "Predict"}
    lat = {
        q: histogram_delta_quantile(
            old, new, "equiserve_request_duration_seconds", q, predict
        )
        for q in (0.5, 0.95, 0.99)
    }
    wait = histogram_delta_quantile(old, new, "equiserve_queue_wait_seconds", 0.5, {})
    gauges = {
        name: _sum_by(new, f"equiserve_{name}")
        for name in ("requests_in_flight", "replicas", "gpu_memory_bytes")
    }
    keys = sorted(set(gauges["replicas"]) | set(structures) | set(calls))
    out = []
    for key in keys:
        n_batches = batches.get(key, 0.0)
        out.append(
            BackendRow(
                model=key[0],
                backend=key[1],
                structures_per_s=structures.get(key, 0.0),
                atoms_per_s=atoms.get(key, 0.0),
                calls_per_s=calls.get(key, 0.0),
                errors_per_s=errors.get(key, 0.0),
                p50_ms=lat[0.5].get(key, math.nan) * 1000,
                p95_ms=lat[0.95].get(key, math.nan) * 1000,
                p99_ms=lat[0.99].get(key, math.nan) * 1000,
                queue_wait_p50_ms=wait.get(key, math.nan) * 1000,
                mean_batch_atoms=batch_atoms.get(key, 0.0) / n_batches
                if n_batches
                else math.nan,
                in_flight=gauges["requests_in_flight"].get(key, 0.0),
                replicas=gauges["replicas"].get(key, math.nan),
                gpu_memory_bytes=gauges["gpu_memory_bytes"].get(key, math.nan),
            )
        )
    return out


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def render(table: Sequence[BackendRow], interval_s: float) -> str:
    """The rows as a fixed-width text table with a header line."""
    header = (
        f"{'model':<14}{'backend':<12}{'struct/s':>9}{'atoms/s':>10}{'calls/s':>8}"
        f"{'err/s':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'wait ms':>9}"
        f"{'batch at':>9}{'inflt':>6}{'repl':>5}{'GPU MiB':>9}"
    )
    lines = [f"equiserve top: rates over the last {interval_s:.1f} s", header]
    for r in table:
        lines.append(
            f"{r.model[:13]:<14}{r.backend[:11]:<12}{r.structures_per_s:>9.2f}"
            f"{r.atoms_per_s:>10.1f}{r.calls_per_s:>8.2f}{r.errors_per_s:>7.2f}"
            f"{_fmt(r.p50_ms, '.1f'):>9}{_fmt(r.p95_ms, '.1f'):>9}"
            f"{_fmt(r.p99_ms, '.1f'):>9}{_fmt(r.queue_wait_p50_ms, '.1f'):>9}"
            f"{_fmt(r.mean_batch_atoms, '.0f'):>9}{r.in_flight:>6.0f}"
            f"{_fmt(r.replicas, '.0f'):>5}"
            f"{_fmt(r.gpu_memory_bytes / 2**20, '.0f'):>9}"
        )
    if not table:
        lines.append("(no equiserve series yet: no deployment has reported)")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``top`` sub-command."""
    top = sub.add_parser("top", help="live throughput and latency per backend")
    top.add_argument("--metrics-url", default=DEFAULT_METRICS_URL)
    top.add_argument("--interval", type=float, default=2.0, help="s between scrapes")
    top.add_argument(
        "--iterations", type=int, default=0, help="stop after N refreshes (0: never)"
    )


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Scrape, wait, scrape, print; until interrupted or ``--iterations`` refreshes."""
    out = out or sys.stdout
    if args.interval <= 0:
        raise ValueError(f"--interval must be positive, got {args.interval}")
    clear = "\x1b[2J\x1b[H" if out.isatty() else ""
    previous = scrape(args.metrics_url)
    done = 0
    try:
        while args.iterations <= 0 or done < args.iterations:
            time.sleep(args.interval)
            current = scrape(args.metrics_url)
            elapsed = current.time_s - previous.time_s
            out.write(clear + render(rows(previous, current), elapsed) + "\n")
            out.flush()
            previous, done = current, done + 1
    except KeyboardInterrupt:
        pass
    return 0
