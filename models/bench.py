"""Model-library benchmark: sevenn's calculator vs our model, side by side.

``python -m models.bench [--device cpu|cuda] [--out bench_results/bench.json]``

Every method runs in its own subprocess on the same fixed structure set, so that peak
memory is measured cleanly: sevenn's calculator one structure at a time; ours with the
``e3nn`` and ``fused`` backends one by one and batched; TorchSim's batched SevenNet
path where it is installed (``pip install -e '.[bench]'``). Printed as a table with
ratios to sevenn, written as JSON, followed by a profile of where the fused model's
time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# method -> (backend, batched, radial table); the peers are handled apart
OURS = {
    "e3nn-one-by-one": ("e3nn", False, False),
    "e3nn-batched": ("e3nn", True, False),
    "fused-one-by-one": ("fused", False, False),
    "fused-batched": ("fused", True, False),
    "fused+table-one-by-one": ("fused", False, True),
}
METHODS = ["sevenn-calculator", *OURS, "torchsim-batched"]


def structures(n: int, size: int) -> list:
    """``n`` rattled copies of a cubic cell of roughly ``size`` atoms (Si and NaCl,
    alternating), fixed seeds."""
    from ase.build import bulk

    reps = {8: 1, 64: 2, 216: 3}[size]
    frames = []
    for k in range(n):
        base = (
            bulk("Si", "diamond", a=5.43, cubic=True)
            if k % 2 == 0
            else bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        )
        atoms = base.repeat((reps, reps, reps))
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    return frames


class RssSampler:
    """Peak resident memory above a baseline, sampled every millisecond."""

    def __init__(self) -> None:
        self.baseline = self._rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _runner(method: str, device: str) -> tuple[Callable[[list], None], int]:
    """A function evaluating a list of structures, and how many structures it holds
    in memory at once (0: all; negative: an atom budget), for memory per atom."""
    if method == "sevenn-calculator":
        from sevenn.calculator import SevenNetCalculator

        calc = SevenNetCalculator("7net-0", device=device)

        def run(frames: list) -> None:
            for atoms in frames:
                calc.reset()
                atoms = atoms.copy()
                atoms.calc = calc
                atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

        return run, 1
    if method == "torchsim-batched":
        return _torchsim_runner(device), 0
    import models

    backend, batched, table = OURS[method]
    model = models.load_model(
        "sevennet-0", backend=backend, device=device, radial_table=table
    )
    if batched:

        def run_batched(frames: list) -> None:
            model.predict(frames)

        return run_batched, -model.batch_atoms

    def one_by_one(frames: list) -> None:
        for atoms in frames:
            model.predict([atoms])

    return one_by_one, 1


def _torchsim_runner(device: str) -> Callable[[list], None]:
    import sevenn.calculator
    import torch

    # torch-sim 0.3 imports a name sevenn 0.13 renamed
    sevenn.calculator.torch_script_type = torch.jit.ScriptModule  # type: ignore
    import torch_sim as ts
    from sevenn.util import load_checkpoint, pretrained_name_to_path
    from torch_sim.models.sevennet import SevenNetModel

    checkpoint = load_checkpoint(pretrained_name_to_path("7net-0"))
    model = SevenNetModel(checkpoint.build_model(), device=device)

    def run(frames: list) -> None:
        state = ts.initialize_state(frames, device=model.device, dtype=model.dtype)
        model(state)

    return run


def worker(method: str, device: str, n: int, size: int, repeats: int) -> dict[str, Any]:
    """Time one method; runs inside its own process."""
    import torch

    frames = structures(n, size)
    run, held = _runner(method, device)
    # memory first, from the loaded state (the pass doubles as the warm-up); then
    # timing without the sampler, whose thread wakes every millisecond and would
    # steal the interpreter from the timed loop
    with RssSampler() as rss:
        run(frames)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(frames)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    atoms = sum(len(a) for a in frames)
    # held: structures in memory at once; 0 all of them; negative, an atom budget
    if held < 0:
        in_memory = min(atoms, -held)
    else:
        in_memory = atoms if held == 0 else held * len(frames[0])
    peak = rss.peak - rss.baseline
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    return {
        "method": method,
        "seconds_per_pass": seconds,
        "structures_per_s": n / seconds,
        "atoms_per_s": atoms / seconds,
        "peak_bytes_above_baseline": peak,
        "atoms_in_memory": in_memory,
        "peak_bytes_per_atom": peak / in_memory,
    }


def profile(device: str, n: int, size: int) -> list[dict[str, Any]]:
    """Top operators by self time for the fused model, one batch of its default
    atom budget."""
    import torch

    import models
    from models.graph import build_batch
    from models.structure import Structure

    model = models.load_model("sevennet-0", backend="fused", device=device)
    frames = structures(n, size)[: max(1, model.batch_atoms // size)]
    model.predict(frames)
    start = time.perf_counter()
    graph = build_batch([Structure.from_atoms(a) for a in frames], model.spec.cutoff)
    graph = graph.to(model.device, model.dtype)
    build = time.perf_counter() - start
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        model.module(graph)
    rows = [{"op": "neighbour list + batching (python)", "self_ms": 1e3 * build}]
    for evt in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]:
        rows.append(
            {
                "op": evt.key,
                "self_ms": evt.self_cpu_time_total / 1e3,
                "calls": evt.count,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--structures", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, choices=[8, 64, 216])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_results/bench.json"))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        result = worker(
            args.worker, args.device, args.structures, args.size, args.repeats
        )
        print(json.dumps(result))
        return
    results = [r for r in (_spawn(m, args) for m in METHODS) if r is not None]
    report = {
        "device": args.device,
        "threads": args.threads,
        "structures": args.structures,
        "atoms_per_structure": args.size,
        "results": results,
        "profile_fused_one_batch": profile(args.device, args.structures, args.size),
    }
    _print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


def _spawn(method: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [
        sys.executable,
        "-m",
        "models.bench",
        "--worker",
        method,
        "--device",
        args.device,
        "--structures",
        str(args.structures),
        "--size",
        str(args.size),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{method}: skipped ({reason})")
        return {"method": method, "skipped": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _print(report: dict[str, Any]) -> None:
    rows = [r for r in report["results"] if "skipped" not in r]
    ref = next((r for r in rows if r["method"] == "sevenn-calculator"), None)
    print(
        f"\nSevenNet-0, {report['structures']} x {report['atoms_per_structure']}-atom "
        f"cells, {report['device']}, {report['threads']} threads"
    )
    print(
        f"{'method':20s} {'struct/s':>9s} {'atoms/s':>9s} {'x sevenn':>9s} "
        f"{'peak MB':>8s} {'KB/atom':>8s} {'mem x sevenn':>12s}"
    )
    for r in rows:
        speed = r["structures_per_s"] / ref["structures_per_s"] if ref else float("nan")
        mem = (
            r["peak_bytes_per_atom"] / ref["peak_bytes_per_atom"]
            if ref and ref["peak_bytes_per_atom"]
            else float("nan")
        )
        print(
            f"{r['method']:20s} {r['structures_per_s']:9.2f} {r['atoms_per_s']:9.0f} "
            f"{speed:9.2f} {r['peak_bytes_above_baseline'] / 2**20:8.1f} "
            f"{r['peak_bytes_per_atom'] / 1024:8.1f} {mem:12.2f}"
        )
    print("\nwhere the fused model's time goes (one batch, forward + backward):")
    for row in report["profile_fused_one_batch"]:
        print(f"  {row['self_ms']:9.1f} ms  {row['op']}")


if __name__ == "__main__":
    main()
