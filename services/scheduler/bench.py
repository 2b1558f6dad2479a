"""Scheduler benchmark: dispatch rate, and a million structures in bounded memory.

Both parts use the labelled stand-in model (:class:`StandInExecutor`: computes
nothing), so they measure the scheduler alone: store transactions, Parquet inputs
and results, dispatch and bookkeeping, on the embedded SQLite store.

``--store-url postgresql://...`` runs both parts on PostgreSQL instead.

1. ``dispatch``: ``--dispatch-n`` structures are stored first, then the scheduler
   runs them; structures/s from start to the last recorded result, set beside the
   target (5,000/s) as a ratio. The ingest rate (appends) is reported too.
2. ``million``: a producer appends ``--million-n`` structures (generated on the
   fly, ``--append`` per call) while the scheduler dispatches them and a consumer
   reads result shards as they complete (as StreamResults does), checking that
   every index arrives exactly once. The process's RSS is sampled every
   ``--sample-s`` seconds; a flat curve (last quarter vs first quarter, printed)
   means memory does not grow with the campaign.

    python -m services.scheduler.bench --out bench_results/scheduler.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.structure import Structure
from services.scheduler import store
from services.scheduler.executors import StandInExecutor, WorkSpec
from services.scheduler.scheduler import Scheduler, SchedulerConfig

logger = logging.getLogger("services.scheduler.bench")

TARGET_PER_S = 5000.0
TENANT = "bench"
SPEC = WorkSpec("stand-in", "", "single_point")


def rss_mb() -> float:
    """Resident set size of this process, MB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def structures(first: int, n: int) -> list[Structure]:
    """``n`` two-atom periodic structures with indices from ``first``."""
    cell = np.eye(3) * 5.43
    pbc = np.ones(3, dtype=bool)
    numbers = np.array([14, 14])
    return [
        Structure(
            numbers,
            np.array([[0.0, 0.0, 0.0], [1.36, 1.36, 1.36 + 1e-7 * k]]),
            cell,
            pbc,
            f"s{k}",
        )
        for k in range(first, first + n)
    ]


class RssSampler:
    """Samples RSS (and a progress counter) in a thread every ``period`` seconds."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.samples: list[tuple[float, float, int]] = []
        self.progress = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._t0, rss_mb(), self.progress))
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _config(data_dir: Path, args: argparse.Namespace) -> SchedulerConfig:
    return SchedulerConfig(
        data_dir=data_dir, store_url=args.store_url, table_prefix=args.prefix,
        chunk_size=args.chunk, max_in_flight=args.in_flight, max_append=args.append,
        max_structures=10_000_000, poll_interval_s=0.05,
    )  # fmt: skip


async def _wait(sched: Scheduler, campaign_id: str) -> store.CampaignRecord:
    while True:
        record = await asyncio.to_thread(sched.store.get_campaign, campaign_id)
        if record is not None and record.state not in store.ACTIVE_STATES:
            return record
        await asyncio.sleep(0.05)


async def bench_dispatch(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Store N structures, then time the scheduler dispatching all of them."""
    sched = Scheduler(_config(data_dir, args), StandInExecutor())
    campaign = await sched.submit(TENANT, "dispatch", SPEC)
    n, step = args.dispatch_n, args.append
    t0 = time.perf_counter()
    for first in range(0, n, step):
        chunk = structures(first, min(step, n - first))
        await sched.append(TENANT, campaign.id, first, chunk, first + step >= n)
    ingest_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    await sched.start()
    record = await _wait(sched, campaign.id)
    dispatch_s = time.perf_counter() - t1
    await sched.stop()
    sched.store.close()
    rate = n / dispatch_s
    return {
        "structures": n, "succeeded": record.succeeded, "ingest_s": ingest_s,
        "ingest_per_s": n / ingest_s, "dispatch_s": dispatch_s,
        "dispatch_per_s": rate, "target_per_s": TARGET_PER_S,
        "ratio_to_target": rate / TARGET_PER_S,
    }  # fmt: skip


async def bench_million(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Produce, dispatch and consume N structures at once; RSS over time."""
    n, step = args.million_n, args.append
    sched = Scheduler(_config(data_dir, args), StandInExecutor())
    await sched.start()
    campaign = await sched.submit(TENANT, "million", SPEC)
    seen = np.zeros(n, dtype=np.uint8)

    async def produce() -> None:
        for first in range(0, n, step):
            chunk = await asyncio.to_thread(structures, first, min(step, n - first))
            await sched.append(TENANT, campaign.id, first, chunk, first + step >= n)

    async def consume(sampler: RssSampler) -> None:
        seq = 0
        while seq < (n + args.chunk - 1) // args.chunk:
            batch = await sched.shards(TENANT, campaign.id, seq, limit=8)
            for record, data in batch:
                table = pq.read_table(pa.BufferReader(data), columns=["index"])
                np.add.at(seen, table.column("index").to_numpy(), 1)
                sampler.progress += record.count
                seq = record.seq + 1
            if not batch:
                await asyncio.sleep(0.05)

    t0 = time.perf_counter()
    with RssSampler(args.sample_s) as sampler:
        await asyncio.gather(produce(), consume(sampler))
        record = await _wait(sched, campaign.id)
    elapsed = time.perf_counter() - t0
    await sched.stop()
    sched.store.close()

    rss = [s[1] for s in sampler.samples]
    quarter = max(len(rss) // 4, 1)
    first, last = float(np.mean(rss[:quarter])), float(np.mean(rss[-quarter:]))
    return {
        "structures": n, "succeeded": record.succeeded, "elapsed_s": elapsed,
        "per_s": n / elapsed, "exactly_once": bool((seen == 1).all()),
        "rss_mb_first_quarter": first, "rss_mb_last_quarter": last,
        "rss_mb_max": max(rss), "rss_growth_ratio": last / first,
        "samples": [
            {"t_s": t, "rss_mb": r, "results": p} for t, r, p in sampler.samples
        ],
    }  # fmt: skip


def plot(million: dict[str, Any], path: Path) -> None:
    """RSS and results over time, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] for s in million["samples"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, [s["rss_mb"] for s in million["samples"]], label="scheduler RSS (MB)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(t, [s["results"] for s in million["samples"]], color="gray", ls="--")
    twin.set_ylabel("results recorded")
    ax.set_title(f"{million['structures']:,} structures, stand-in model")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path("bench_results/scheduler.json")
    )
    parser.add_argument("--dispatch-n", type=int, default=200_000)
    parser.add_argument("--million-n", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1000, help="structures per unit")
    parser.add_argument("--in-flight", type=int, default=8, help="units in flight")
    parser.add_argument("--append", type=int, default=10_000, help="per append")
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument(
        "--store-url", default="", help="default: a SQLite file; or postgresql://..."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # a fresh table prefix per run, dropped at the end (PostgreSQL is shared)
    args.prefix = f"bench{uuid.uuid4().hex[:8]}_"

    store_name = "postgresql" if args.store_url.startswith("postgres") else "sqlite"
    report: dict[str, Any] = {"model": StandInExecutor.label, "store": store_name}
    with tempfile.TemporaryDirectory(prefix="es-bench-") as tmp:
        report["dispatch"] = asyncio.run(bench_dispatch(Path(tmp) / "d", args))
        d = report["dispatch"]
        print(
            f"dispatch: {d['structures']:,} structures in {d['dispatch_s']:.1f} s = "
            f"{d['dispatch_per_s']:,.0f}/s; target {TARGET_PER_S:,.0f}/s; ratio "
            f"{d['ratio_to_target']:.2f}x (ingest {d['ingest_per_s']:,.0f}/s)"
        )
        if not args.skip_million:
            report["million"] = asyncio.run(bench_million(Path(tmp) / "m", args))
            m = report["million"]
            print(
                f"million: {m['structures']:,} in {m['elapsed_s']:.0f} s "
                f"({m['per_s']:,.0f}/s), exactly once: {m['exactly_once']}; RSS "
                f"first quarter {m['rss_mb_first_quarter']:.0f} MB, last quarter "
                f"{m['rss_mb_last_quarter']:.0f} MB (ratio "
                f"{m['rss_growth_ratio']:.2f}), max {m['rss_mb_max']:.0f} MB"
            )
    if args.store_url:
        store.Store(args.store_url, args.prefix).drop_tables()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if "million" in report:
        plot(report["million"], args.out.with_suffix(".png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
