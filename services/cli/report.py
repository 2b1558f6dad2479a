"""``equiserve report``: PNG plots of a campaign's throughput and latency per backend.

Two sources, the same plots:

* ``--prometheus URL``: range queries to a Prometheus server's HTTP API over the
  campaign's lifetime (from GetCampaign: created to last update) or ``--since``
  seconds ago until now;
* otherwise the gateway's ``/metrics`` is sampled every ``--interval`` seconds
  (rates between consecutive scrapes, as ``equiserve top``) until the campaign ends
  or ``--duration`` seconds pass, whichever is first.

::

    equiserve report [CAMPAIGN_ID] -o report/ [--prometheus http://127.0.0.1:9090]
                     [--metrics-url URL] [--interval 2] [--duration 600] [--since 3600]

Writes ``throughput.png`` (structures/s and atoms/s per model and backend, with the
campaign's own completion rate when a campaign is given), ``latency.png`` (Predict
p50/p95/p99 per backend) and ``report.json`` with the plotted series.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from services.cli.top import DEFAULT_METRICS_URL, rows, scrape

logger = logging.getLogger(__name__)

QUANTILES = (0.5, 0.95, 0.99)
# series name -> label -> [[t_s, value], ...]
Series = dict[str, dict[str, list[list[float]]]]
_FINAL = {"CAMPAIGN_STATE_COMPLETED", "CAMPAIGN_STATE_CANCELLED",
          "CAMPAIGN_STATE_FAILED"}  # fmt: skip


def prometheus_queries(rate_window: str) -> dict[str, str]:
    """The PromQL of every plotted series (``rate_window`` like ``1m``)."""
    queries = {
        "structures_per_s": "sum by (model, backend) "
        f"(rate(equiserve_structures_processed_total[{rate_window}]))",
        "atoms_per_s": "sum by (model, backend) "
        f"(rate(equiserve_atoms_processed_total[{rate_window}]))",
    }
    for q in QUANTILES:
        queries[f"latency_p{round(q * 100)}_s"] = (
            f"histogram_quantile({q}, sum by (backend, le) (rate("
            f'equiserve_request_duration_seconds_bucket{{method="Predict"}}'
            f"[{rate_window}])))"
        )
    return queries


def query_range(
    base_url: str, query: str, start: float, end: float, step_s: float
) -> dict[str, list[list[float]]]:
    """One Prometheus range query: ``label -> [[t_s, value], ...]``, t from start.

    Raises:
        OSError: if the server cannot be reached or answers an error.
    """
    params = urllib.parse.urlencode(
        {"query": query, "start": start, "end": end, "step": step_s}
    )
    url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.loads(response.read().decode())
    except OSError as err:
        raise OSError(f"Prometheus query failed at {base_url} ({err})") from err
    if body.get("status") != "success":
        raise OSError(f"Prometheus answered {body.get('error', body)} for {query}")
    out: dict[str, list[list[float]]] = {}
    for result in body["data"]["result"]:
        labels = result["metric"]
        # "model/backend" as in the sampled series, or the backend alone
        parts = [labels[k] for k in ("model", "backend") if k in labels]
        out["/".join(parts) or "all"] = [
            [float(t) - start, float(v)]
            for t, v in result["values"]
            if math.isfinite(float(v))
        ]
    return out


def from_prometheus(base_url: str, start: float, end: float) -> Series:
    """Every plotted series from a Prometheus server between two Unix times."""
    if end <= start:
        raise ValueError(f"the window must have end > start, got {start} .. {end}")
    step = max(1.0, (end - start) / 300)  # about 300 points
    window = f"{max(int(4 * step), 60)}s"  # a rate window of several steps
    return {
        name: query_range(base_url, query, start, end, step)
        for name, query in prometheus_queries(window).items()
    }


def from_samples(
    metrics_url: str,
    interval_s: float,
    duration_s: float,
    campaign: Any | None = None,
) -> tuple[Series, list[list[float]]]:
    """Sample ``/metrics`` until the campaign ends or ``duration_s`` passes.

    Args:
        metrics_url: the gateway's ``/metrics`` URL.
        interval_s: seconds between scrapes (> 0).
        duration_s: longest sampling time, s (> 0).
        campaign: ``(client, campaign_id)`` to poll progress from, or ``None``.

    Returns:
        The series, and campaign progress ``[[t_s, succeeded, failed], ...]``.
    """
    if interval_s <= 0 or duration_s <= 0:
        raise ValueError(
            f"interval and duration must be positive, got {interval_s}, {duration_s}"
        )
    series: Series = defaultdict(lambda: defaultdict(list))
    progress: list[list[float]] = []
    t0 = time.monotonic()
    previous = scrape(metrics_url)
    while time.monotonic() - t0 < duration_s:
        time.sleep(interval_s)
        current = scrape(metrics_url)
        t = round(current.time_s - t0, 3)
        for row in rows(previous, current):
            key = f"{row.model}/{row.backend}"
            series["structures_per_s"][key].append([t, row.structures_per_s])
            series["atoms_per_s"][key].append([t, row.atoms_per_s])
            for q, value in ((50, row.p50_ms), (95, row.p95_ms), (99, row.p99_ms)):
                if not math.isnan(value):
                    series[f"latency_p{q}_s"][row.backend].append([t, value / 1000])
        previous = current
        if campaign is not None and _campaign_done(campaign, t, progress):
            break
    return {k: dict(v) for k, v in series.items()}, progress


def _campaign_done(campaign: Any, t: float, progress: list[list[float]]) -> bool:
    """Record one progress sample; True once the campaign reached a final state."""
    from services.cli.campaigns import STATE_NAMES

    client, campaign_id = campaign
    c = client.get(campaign_id)
    progress.append([t, float(c.succeeded), float(c.failed)])
    return f"CAMPAIGN_STATE_{STATE_NAMES[c.state].upper()}" in _FINAL


def plot(out: Path, series: Series, progress: list[list[float]], title: str) -> None:
    """Write throughput.png and latency.png under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (ax_s, ax_a) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for ax, name, unit in ((ax_s, "structures_per_s", "structures/s"),
                           (ax_a, "atoms_per_s", "atoms/s")):  # fmt: skip
        for label, points in sorted(series.get(name, {}).items()):
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_ylabel(unit)
    if len(progress) > 1:
        t = [p[0] for p in progress]
        done = [p[1] + p[2] for p in progress]
        rate = [(done[i] - done[i - 1]) / max(t[i] - t[i - 1], 1e-9)
                for i in range(1, len(t))]  # fmt: skip
        ax_s.plot(t[1:], rate, "k--", label="campaign completions")
    ax_s.set_title(f"{title}: throughput per model/backend")
    ax_a.set_xlabel("time, s")
    for ax in (ax_s, ax_a):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for q, style in zip((50, 95, 99), ("-", "--", ":")):
        for label, points in sorted(series.get(f"latency_p{q}_s", {}).items()):
            if points:
                ax.plot(*zip(*points), style, label=f"p{q} {label}")
    ax.set_yscale("log")
    ax.set_ylabel("Predict latency, s")
    ax.set_xlabel("time, s")
    ax.set_title(f"{title}: latency per backend")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``report`` sub-command."""
    p = sub.add_parser("report", help="PNG plots of throughput and latency")
    p.add_argument("campaign", nargs="?", help="campaign id (its lifetime)")
    p.add_argument("-o", "--output", type=Path, default=Path("report"))
    p.add_argument("--prometheus", default="", help="Prometheus base URL")
    p.add_argument("--since", type=float, default=3600.0,
                   help="with --prometheus and no campaign: seconds ago")  # fmt: skip
    p.add_argument("--metrics-url", default=DEFAULT_METRICS_URL)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=600.0, help="most s sampled")


def run(args: argparse.Namespace) -> int:
    """Collect the series from Prometheus or from scrapes, then plot them."""
    client = None
    if args.campaign:
        from services.cli.campaigns import CampaignClient

        client = CampaignClient(args.address, args.api_key)
    title = f"campaign {args.campaign}" if args.campaign else "equiserve"
    progress: list[list[float]] = []
    try:
        if args.prometheus:
            end, start = time.time(), time.time() - args.since
            if client is not None:
                c = client.get(args.campaign)
                start, end = c.created_at, max(c.updated_at, c.created_at + 1)
            series = from_prometheus(args.prometheus, start, end)
        else:
            campaign = (client, args.campaign) if client is not None else None
            series, progress = from_samples(
                args.metrics_url, args.interval, args.duration, campaign
            )
    finally:
        if client is not None:
            client.close()
    plot(args.output, series, progress, title)
    payload = {"title": title, "series": series, "campaign_progress": progress}
    (args.output / "report.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.output}/throughput.png, latency.png and report.json")
    return 0
