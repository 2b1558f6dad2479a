"""``make soak``: a long run against the local platform with no errors and flat memory.

Starts the real platform (:class:`~load_tests.platform.LocalPlatform`), keeps
``--concurrency`` callers sending small Predict calls for ``--duration`` seconds (at
least 600 for ``make soak``), and samples the memory of the platform's whole process
tree (gateway, Ray's processes, the replicas) every ``--sample-every`` seconds.

Memory is PSS (proportional set size: shared pages split between the processes
sharing them, so that the sum over the tree does not count them twice). Flat means:
after a warm-up (the first 20% of the run), the median of the last 20% of samples
lies within ``--max-growth`` (default 5%) of the median of the 20% after warm-up;
the least-squares slope over the post-warm-up samples is reported too (MB/h).

Writes ``soak.json`` (calls, errors, latency, memory samples and verdict) and
``soak.png`` (memory and throughput over time); exit status 0 only when the run had
no error and flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from load_tests.loadgen import LoadConfig, Tenant, run_scenario
from load_tests.platform import LocalPlatform
from load_tests.stats import throughput_series, write_json

logger = logging.getLogger(__name__)

MIN_SOAK_S = 600.0
WARMUP_SHARE = 0.2
WINDOW_SHARE = 0.2


def tree_memory_mb(pid: int) -> dict[str, float]:
    """PSS of a process and all its descendants, MB, by process name.

    Processes that exit while being read are skipped.
    """
    import psutil

    root = psutil.Process(pid)
    out: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            pss = proc.memory_full_info().pss / 2**20
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[name] = out.get(name, 0.0) + pss
    return out


def flatness(
    samples: Sequence[tuple[float, float]], max_growth: float
) -> dict[str, Any]:
    """Verdict on memory samples ``(t_s, total_mb)`` (see the module docstring).

    Raises:
        ValueError: with fewer than 10 samples (too few to judge).
    """
    if len(samples) < 10:
        raise ValueError(
            f"need at least 10 memory samples to judge, got {len(samples)}"
        )
    n = len(samples)
    after = list(samples[int(n * WARMUP_SHARE) :])
    width = max(2, int(n * WINDOW_SHARE))
    early = statistics.median(v for _, v in after[:width])
    late = statistics.median(v for _, v in after[-width:])
    ts = [t for t, _ in after]
    vs = [v for _, v in after]
    t_mean, v_mean = statistics.fmean(ts), statistics.fmean(vs)
    var = sum((t - t_mean) ** 2 for t in ts)
    slope = sum((t - t_mean) * (v - v_mean) for t, v in after) / var if var else 0.0
    growth = (late - early) / early
    return {
        "early_median_mb": round(early, 1),
        "late_median_mb": round(late, 1),
        "growth": round(growth, 4),
        "slope_mb_per_h": round(slope * 3600, 1),
        "max_growth": max_growth,
        "flat": growth <= max_growth,
    }


class _Sampler(threading.Thread):
    """Samples the platform's tree memory every ``every_s`` seconds until stopped."""

    def __init__(self, pid: int, every_s: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            self.samples.append((time.monotonic() - t0, tree_memory_mb(self.pid)))
            self.stop_event.wait(self.every_s)


def plot(path: Path, memory: list[tuple[float, float]], rates: tuple) -> None:
    """Memory of the process tree and structures/s over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_t) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax_m.plot([t for t, _ in memory], [v for _, v in memory])
    ax_m.set_ylabel("platform PSS, MB")
    ax_t.step(rates[0], rates[1], where="post")
    ax_t.set_ylabel("structures/s")
    ax_t.set_xlabel("time, s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=MIN_SOAK_S)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--max-growth", type=float, default=0.05)
    p.add_argument(
        "--allow-short", action="store_true", help="allow short runs (smoke tests)"
    )
    p.add_argument("--out", type=Path, default=Path("load_results/soak"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    if args.duration < MIN_SOAK_S and not args.allow_short:
        raise SystemExit(
            f"a soak runs at least {MIN_SOAK_S:.0f} s; got {args.duration}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalPlatform(args.out / "platform.log") as platform:
        sampler = _Sampler(platform.pid, args.sample_every)
        sampler.start()
        config = LoadConfig(
            target=platform.target,
            tenants=(Tenant("tenant-a", platform.keys["tenant-a"]),),
            concurrency=args.concurrency,
            max_calls=1_000_000,
            duration_s=args.duration,
        )
        summary, records = asyncio.run(run_scenario("small", config))
        sampler.stop_event.set()
        sampler.join()
    memory = [(t, sum(by_name.values())) for t, by_name in sampler.samples]
    verdict = flatness(memory, args.max_growth)
    ok = not summary.errors_by_code and verdict["flat"]
    payload = {
        "ok": ok,
        # other users share the machine: their load shows in latency and throughput
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "summary": summary.to_dict(),
        "memory": verdict,
        "memory_samples_mb": [[round(t, 1), round(v, 1)] for t, v in memory],
        "memory_by_process_last_mb": {
            k: round(v, 1) for k, v in sorted(sampler.samples[-1][1].items())
        },
    }
    write_json(args.out / "soak.json", payload)
    plot(args.out / "soak.png", memory, throughput_series(records, 10.0))
    print(
        f"soak {summary.wall_s:.0f} s: {summary.calls} calls, errors "
        f"{summary.errors_by_code}, {summary.structures_per_s:.2f} structures/s, "
        f"p99 {summary.latency_ms['p99']:.0f} ms; memory {verdict['early_median_mb']}"
        f" -> {verdict['late_median_mb']} MB ({verdict['growth']:+.1%}, "
        f"{verdict['slope_mb_per_h']:+.0f} MB/h): {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
