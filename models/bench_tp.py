"""Tensor-product backend benchmarks: microbenchmarks and the SevenNet-0 frontier.

``python -m models.bench_tp`` (``make bench-tp``) runs, side by side in one process:

1. Microbenchmarks in the style of "The Price of Freedom": a channelwise (``uvu``)
   product with per-edge weights, in three shapes, for ``L = 1..8``:
   ``single`` (one irrep ``L`` times one harmonic ``L``, every output up to ``2L``),
   ``one-to-many`` (one irrep ``L`` times harmonics ``0..L``, outputs up to ``L``)
   and ``many-to-many`` (irreps ``0..L`` times harmonics ``0..L``, outputs up to
   ``L``), for every backend. Writes ``tp_micro.{csv,json,png}``.
2. The frontier (:mod:`models.bench_tp_frontier`): SevenNet-0 through every backend
   on a fixed structure set, error against the exact model and speed. Writes
   ``tp_frontier.{csv,json,png}``.

Timings are medians after a warm-up, with ``torch.no_grad`` and the thread count
given by ``--threads``. Results print as tables with ratios to e3nn and to
``gaunt-grid`` next to the Price of Freedom CPU ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from e3nn import o3

from models.tp import ConvSpec, build_backend
from models.tp.checks import random_inputs
from models.tp.cueq import BackendUnavailableError

logger = logging.getLogger(__name__)

CASES = ("single", "one-to-many", "many-to-many")
BASE_BACKENDS = ("e3nn", "fused", "gaunt-grid", "gaunt-fourier", "cueq")
# ALS sweeps for the microbenchmark's CP factors: their speed does not depend on the
# fit, whose accuracy the frontier measures with fully fitted factors.
MICRO_CP_SWEEPS = 5
# Price of Freedom, CPU, batch 10000, inputs up to L, outputs up to 2L (ms).
POF_CPU_MS = {
    4: {
        "cg-dense": 20.95,
        "cg-sparse": 33.25,
        "gaunt-grid": 5.08,
        "gaunt-fourier": 217,
    },
    10: {
        "cg-dense": 424.5,
        "cg-sparse": 837.3,
        "gaunt-grid": 60.1,
        "gaunt-fourier": 4658,
    },
}


def micro_spec(case: str, l: int) -> ConvSpec:
    """The ``ConvSpec`` of one microbenchmark shape at degree ``l`` (even parity)."""
    channels = 1  # multiplicities are set by the caller through ``with_channels``
    sh = o3.Irreps.spherical_harmonics(l, p=1)
    if case == "single":
        return ConvSpec.channelwise(
            o3.Irreps(f"{channels}x{l}e"), o3.Irreps(f"{l}e"), 2 * l
        )
    if case == "one-to-many":
        return ConvSpec.channelwise(o3.Irreps(f"{channels}x{l}e"), sh, l)
    if case == "many-to-many":
        irreps = o3.Irreps([(channels, (k, 1)) for k in range(l + 1)])
        return ConvSpec.channelwise(irreps, sh, l)
    raise ValueError(f"unknown case {case!r}; expected one of {CASES}")


def with_channels(spec: ConvSpec, channels: int) -> ConvSpec:
    """``spec`` with every first-input multiplicity set to ``channels``."""
    irreps_in1 = o3.Irreps([(channels, ir) for _, ir in spec.irreps_in1])
    irreps_out = o3.Irreps([(channels, ir) for _, ir in spec.irreps_out])
    return ConvSpec(irreps_in1, spec.irreps_in2, irreps_out, spec.instructions)


def cp_ranks(l: int) -> tuple[int, int]:
    """Two ranks per degree: ``(L+1)^2`` and TDN's ``7 L^2``."""
    return (l + 1) ** 2, 7 * l * l


def time_call(
    fn: Callable[[], Any], device: torch.device, repeats: int, budget_s: float
) -> tuple[float, float]:
    """``(best, median)`` wall time (s) of ``fn`` after one warm-up call.

    The best of the repeats is the figure reported: on a shared machine the other
    load only ever adds time. Stops early once ``budget_s`` is spent (at least one
    timed call).
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return min(times), statistics.median(times)


def run_micro(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Every (case, L, backend) timing; a backend slower than ``--max-seconds`` at
    some L is not run at larger L for that case."""
    rows: list[dict[str, Any]] = []
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    for case in args.cases:
        stopped: set[str] = set()
        for l in range(
            1, (args.max_l_many if case == "many-to-many" else args.max_l) + 1
        ):
            spec = with_channels(micro_spec(case, l), args.channels)
            x, y, w = random_inputs(spec, args.edges, dtype, seed=l, device=device)
            lo, hi = cp_ranks(l)
            names = [
                *BASE_BACKENDS,
                f"cp:rank={lo},max_iter={MICRO_CP_SWEEPS}",
                f"cp:rank={hi},max_iter={MICRO_CP_SWEEPS}",
            ]
            for name in names:
                label = name.split(",")[0]
                key = label.split(":")[0] + ("-lo" if label.endswith(f"={lo}") else "")
                if key in stopped or (
                    args.backends and label.split(":")[0] not in args.backends
                ):
                    continue
                row = _measure(name, label, spec, (x, y, w), device, dtype, args)
                row.update(
                    case=case,
                    L=l,
                    edges=args.edges,
                    channels=args.channels,
                    instructions=len(spec.instructions),
                )
                rows.append(row)
                logger.info(
                    "%-13s L=%d %-14s %s",
                    case,
                    l,
                    label,
                    row.get("ms", row.get("skipped")),
                )
                if row.get("ms", 0.0) > args.max_seconds * 1e3:
                    stopped.add(key)
    return rows


def _measure(
    name: str,
    label: str,
    spec: ConvSpec,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Build one backend and time its forward pass; unavailability is recorded."""
    try:
        backend = build_backend(name, spec).to(device=device, dtype=dtype)
    except BackendUnavailableError as err:
        return {"backend": label, "skipped": str(err)}
    x, y, w = inputs
    with torch.no_grad():
        best, median = time_call(
            lambda: backend(x, y, w), device, args.repeats, args.max_seconds
        )
    return {"backend": label, "ms": best * 1e3, "median_ms": median * 1e3}


def write_micro(
    rows: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]
) -> None:
    """``tp_micro.csv``, ``tp_micro.json`` and ``tp_micro.png`` (time against L)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    timed = [r for r in rows if "ms" in r]
    fields = [
        "case",
        "L",
        "backend",
        "ms",
        "median_ms",
        "edges",
        "channels",
        "instructions",
    ]
    with open(out_dir / "tp_micro.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(timed)
    summary = {"meta": meta, "rows": rows, "ratios": micro_ratios(timed)}
    (out_dir / "tp_micro.json").write_text(json.dumps(summary, indent=1))
    plot_micro(timed, out_dir / "tp_micro.png")


def _family(label: str) -> str:
    """``cp:rank=25`` -> ``cp (rank (L+1)^2)`` etc., so one line per family."""
    if not label.startswith("cp:"):
        return label
    return "cp"


def micro_ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``ratios[case][L]``: each backend's time over gaunt-grid's and over e3nn's."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        same = {
            x["backend"]: x["ms"]
            for x in rows
            if x["case"] == r["case"] and x["L"] == r["L"]
        }
        entry = out.setdefault(r["case"], {}).setdefault(str(r["L"]), {})
        if "gaunt-grid" in same:
            entry[f"{r['backend']}/gaunt-grid"] = r["ms"] / same["gaunt-grid"]
        if "e3nn" in same:
            entry[f"{r['backend']}/e3nn"] = r["ms"] / same["e3nn"]
    return out


def plot_micro(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per case, time (ms, log) against L, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CASES), figsize=(15, 4.5))
    for ax, case in zip(axes, CASES):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["case"] == case:
                lo, _ = cp_ranks(r["L"])
                key = r["backend"]
                if key.startswith("cp:"):
                    key = (
                        "cp rank (L+1)^2" if key == f"cp:rank={lo}" else "cp rank 7L^2"
                    )
                series.setdefault(key, []).append((r["L"], r["ms"]))
        for key, points in sorted(series.items()):
            ls, ms = zip(*sorted(points))
            ax.plot(ls, ms, marker="o", label=key)
        ax.set(title=case, xlabel="L", ylabel="ms per call", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Channelwise TP with per-edge weights (CPU unless noted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_micro(rows: list[dict[str, Any]]) -> None:
    """Table of times and the ratios that the Price of Freedom reports."""
    timed = [r for r in rows if "ms" in r]
    ratios = micro_ratios(timed)
    print("\n== microbenchmarks (ms per call) ==")
    for case in CASES:
        case_rows = [r for r in timed if r["case"] == case]
        if not case_rows:
            continue
        labels = sorted(
            {
                _family(r["backend"])
                if not r["backend"].startswith("cp:")
                else r["backend"]
                for r in case_rows
            },
            key=str,
        )
        print(f"\n{case}")
        for l in sorted({r["L"] for r in case_rows}):
            cells = {r["backend"]: r["ms"] for r in case_rows if r["L"] == l}
            text = "  ".join(f"{k}={v:.2f}" for k, v in sorted(cells.items()))
            entry = ratios.get(case, {}).get(str(l), {})
            e3 = entry.get("e3nn/gaunt-grid")
            fo = entry.get("gaunt-fourier/gaunt-grid")
            extra = ""
            if e3 is not None:
                extra += f"  | e3nn/grid={e3:.2f}x"
            if fo is not None:
                extra += f" fourier/grid={fo:.2f}x"
            print(f"  L={l}: {text}{extra}")
        del labels
    print("\nPrice of Freedom, CPU (inputs up to L, outputs up to 2L, batch 10000):")
    for l, t in POF_CPU_MS.items():
        print(
            f"  L={l}: cg-dense/grid={t['cg-dense'] / t['gaunt-grid']:.1f}x "
            f"cg-sparse/grid={t['cg-sparse'] / t['gaunt-grid']:.1f}x "
            f"fourier/grid={t['gaunt-fourier'] / t['gaunt-grid']:.1f}x"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--edges", type=int, default=1000, help="batch of edges")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--max-l", type=int, default=8)
    parser.add_argument(
        "--max-l-many", type=int, default=6, help="largest L of the many-to-many case"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=2.0,
        help="a backend slower than this per call stops growing L",
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument(
        "--backends",
        nargs="*",
        default=[],
        help="restrict to these backend names (default: all)",
    )
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-frontier", action="store_true")
    parser.add_argument(
        "--frontier-ranks", type=int, nargs="+", default=[4, 8, 16, 32, 48]
    )
    parser.add_argument("--frontier-repeats", type=int, default=3)
    return parser.parse_args(argv)


def run_metadata(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Machine and settings recorded next to every result."""
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "edges": args.edges,
        "channels": args.channels,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # other sessions' load on a shared machine inflates every timing
        "load_average_1_5_15": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but no CUDA device is available")
    meta = run_metadata(args, device)
    if not args.skip_micro:
        rows = run_micro(args, device)
        write_micro(rows, args.out, meta)
        print_micro(rows)
    if not args.skip_frontier:
        from models.bench_tp_frontier import run_frontier

        run_frontier(args, device, {**meta, "load_average_1_5_15": os.getloadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
