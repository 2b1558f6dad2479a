"""The SevenNet-0 runtime/accuracy frontier: one point per backend and rank.

Run through ``python -m models.bench_tp`` (see there). Two passes over a fixed
structure set built with ``ase.build`` (rattled Si and NaCl, strained Cu, a Si
slab):

* accuracy, float64 with the radial MLPs (no table): energy (eV/atom), force
  (eV/Å) and stress (eV/Å^3) errors of every backend against the exact model
  (the ``e3nn`` backend), plus the equivariance error of every backend on
  SevenNet-0's own convolution specs and, for ``cp``, the fitted factors' error;
* speed, float32 as served (library defaults): best-of-N wall time of
  ``predict`` on the whole set, energy + forces + stress.

Writes ``tp_frontier.{csv,json,png}``; the plot is speed against force error.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models
from models.tp import build_backend
from models.tp.checks import equivariance_error
from models.tp.sphere import float64_default

logger = logging.getLogger(__name__)

MODEL = "sevennet-0"
REFERENCE = "e3nn"
# Seconds; a warm-up slower than this is the reported time (keeps the run short).
SLOW_WARMUP_S = 10.0


def frontier_structures() -> list[Any]:
    """The fixed structure set (ASE ``Atoms``), deterministic."""
    from ase.build import bulk, diamond100

    si = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    si.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    nacl.rattle(0.05, seed=2)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cu.set_cell(cu.cell * 1.02, scale_atoms=True)
    cu.rattle(0.03, seed=3)
    slab = diamond100("Si", size=(2, 2, 6), vacuum=6.0)
    slab.pbc = (True, True, True)  # vacuum along z; fully periodic so stress exists
    slab.rattle(0.02, seed=4)
    for atoms, name in (
        (si, "Si64-rattled"),
        (nacl, "NaCl64-rattled"),
        (cu, "Cu32-strained"),
        (slab, "Si100-slab"),
    ):
        atoms.info["label"] = name
    return [si, nacl, cu, slab]


def frontier_backends(ranks: list[int]) -> list[str]:
    """Every backend the registry lists for SevenNet-0, cp at each rank."""
    spec = models.get_spec(MODEL)
    names = [b for b in sorted(spec.backends) if b != "cp"]
    if "cp" in spec.backends:
        names += [f"cp:rank={r}" for r in ranks]
    return names


def _predict(model: Any, structures: list[Any]) -> list[Any]:
    results = model.predict(structures)
    for r in results:
        if isinstance(r, Exception):
            raise RuntimeError(f"frontier structure failed: {r}")
    return results


def accuracy_pass(
    backends: list[str], structures: list[Any]
) -> dict[str, dict[str, Any]]:
    """Errors of each backend against the float64 reference; equivariance errors."""
    reference = _predict(
        models.load_model(MODEL, REFERENCE, dtype="float64", radial_table=False),
        structures,
    )
    out: dict[str, dict[str, Any]] = {}
    for name in backends:
        try:
            model = models.load_model(MODEL, name, dtype="float64", radial_table=False)
        except Exception as err:  # an unavailable backend is reported, not fatal
            out[name] = {"skipped": f"{type(err).__name__}: {err}"}
            continue
        out[name] = errors(_predict(model, structures), reference)
        out[name].update(backend_checks(name))
        logger.info("accuracy %-16s %s", name, out[name])
    return out


def errors(pred: list[Any], ref: list[Any]) -> dict[str, float]:
    """MAE and max errors: energy eV/atom, forces eV/Å, stress eV/Å^3."""
    de = [abs(p.energy - r.energy) / len(r.forces) for p, r in zip(pred, ref)]
    df = np.concatenate(
        [np.abs(p.forces - r.forces).ravel() for p, r in zip(pred, ref)]
    )
    ds = [
        np.abs(p.stress - r.stress)
        for p, r in zip(pred, ref)
        if p.stress is not None and r.stress is not None
    ]
    stress = np.concatenate(ds) if ds else np.zeros(1)
    return {
        "energy_mae_ev_per_atom": float(np.mean(de)),
        "energy_max_ev_per_atom": float(np.max(de)),
        "force_mae_ev_per_a": float(df.mean()),
        "force_max_ev_per_a": float(df.max()),
        "stress_mae_ev_per_a3": float(stress.mean()),
    }


def backend_checks(name: str) -> dict[str, Any]:
    """Equivariance error (max over SevenNet-0's layers) and cp's fit error."""
    out: dict[str, Any] = {"equivariance_error": 0.0}
    for spec in models.get_spec(MODEL).conv_specs:
        with float64_default():
            backend = build_backend(name, spec).double()
        out["equivariance_error"] = max(
            out["equivariance_error"], equivariance_error(backend, n_edges=8)
        )
        fit = getattr(backend, "relative_error", None)
        if fit is not None:
            out["cp_fit_error"] = max(out.get("cp_fit_error", 0.0), float(fit))
    return out


def speed_pass(
    backends: list[str], structures: list[Any], device: torch.device, repeats: int
) -> dict[str, dict[str, Any]]:
    """Best-of-``repeats`` float32 ``predict`` time of the whole set per backend."""
    n_atoms = sum(len(s) for s in structures)
    out: dict[str, dict[str, Any]] = {}
    for name in [REFERENCE, *[b for b in backends if b != REFERENCE]]:
        try:
            model = models.load_model(MODEL, name, device=str(device))
        except Exception as err:
            out[name] = {"skipped": f"{type(err).__name__}: {err}"}
            continue
        t0 = time.perf_counter()
        _predict(model, structures)  # warm-up
        times = [time.perf_counter() - t0]
        # a backend slower than SLOW_WARMUP_S keeps its warm-up time (an upper bound)
        for _ in range(0 if times[0] > SLOW_WARMUP_S else repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            _predict(model, structures)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        best = min(times[1:] or times)
        out[name] = {
            "seconds": best,
            "atoms_per_s": n_atoms / best,
            "timed_with_warmup": len(times) == 1,
        }
        logger.info("speed %-16s %.3f s", name, best)
    ref = out.get(REFERENCE, {}).get("seconds")
    for row in out.values():
        if ref and "seconds" in row:
            row["speedup_vs_e3nn"] = ref / row["seconds"]
    return out


def run_frontier(
    args: argparse.Namespace, device: torch.device, meta: dict[str, Any]
) -> None:
    """Both passes, written to ``args.out`` and printed."""
    structures = frontier_structures()
    backends = frontier_backends(args.frontier_ranks)
    accuracy = accuracy_pass([b for b in backends if b != REFERENCE], structures)
    speed = speed_pass(backends, structures, device, args.frontier_repeats)
    rows = []
    for name in [REFERENCE, *[b for b in backends if b != REFERENCE]]:
        row: dict[str, Any] = {"backend": name}
        row["exact"] = models.get_spec(MODEL).backend_info(name).exact
        row.update(
            accuracy.get(
                name,
                {
                    "energy_mae_ev_per_atom": 0.0,
                    "force_mae_ev_per_a": 0.0,
                    "force_max_ev_per_a": 0.0,
                    "stress_mae_ev_per_a3": 0.0,
                },
            )
        )
        row.update({k: v for k, v in speed.get(name, {}).items() if k != "skipped"})
        if "skipped" in speed.get(name, {}):
            row["skipped"] = speed[name]["skipped"]
        rows.append(row)
    meta = {
        **meta,
        "structures": [s.info["label"] for s in structures],
        "n_atoms": [len(s) for s in structures],
    }
    write_frontier(rows, args.out, meta)
    print_frontier(rows)


def write_frontier(
    rows: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]
) -> None:
    """``tp_frontier.csv``, ``.json`` and ``.png`` (speed against force error)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = [
        "backend",
        "exact",
        "seconds",
        "speedup_vs_e3nn",
        "energy_mae_ev_per_atom",
        "force_mae_ev_per_a",
        "force_max_ev_per_a",
        "stress_mae_ev_per_a3",
        "equivariance_error",
        "cp_fit_error",
        "skipped",
    ]
    with open(out_dir / "tp_frontier.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "tp_frontier.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=1)
    )
    plot_frontier(rows, out_dir / "tp_frontier.png")


def plot_frontier(rows: list[dict[str, Any]], path: Path) -> None:
    """Structures per second against force MAE (log), one labelled point per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in rows:
        if "seconds" not in r:
            continue
        err = max(r.get("force_mae_ev_per_a", 0.0), 1e-9)  # the reference sits at 1e-9
        color = (
            "tab:green"
            if r["exact"]
            else ("tab:red" if r["backend"].startswith("gaunt") else "tab:blue")
        )
        ax.scatter(err, r["speedup_vs_e3nn"], color=color)
        ax.annotate(
            r["backend"],
            (err, r["speedup_vs_e3nn"]),
            fontsize=8,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set(
        xscale="log",
        xlabel="force MAE vs exact model (eV/Å; exact at 1e-9)",
        ylabel="speed relative to e3nn (predict, E+F+S)",
        title="SevenNet-0: speed against error per TP backend",
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_frontier(rows: list[dict[str, Any]]) -> None:
    print("\n== SevenNet-0 frontier (errors vs exact float64 model; speed float32) ==")
    print(
        f"{'backend':<16}{'exact':>6}{'time s':>9}{'x e3nn':>8}{'dE eV/at':>11}"
        f"{'F MAE':>10}{'F max':>10}{'S MAE':>10}{'equiv':>10}{'cp fit':>9}"
    )
    for r in rows:
        if "skipped" in r and "seconds" not in r:
            print(f"{r['backend']:<16} skipped: {r['skipped']}")
            continue
        print(
            f"{r['backend']:<16}{r['exact']!s:>6}{r.get('seconds', float('nan')):>9.3f}"
            f"{r.get('speedup_vs_e3nn', float('nan')):>8.2f}"
            f"{r.get('energy_mae_ev_per_atom', 0):>11.2e}"
            f"{r.get('force_mae_ev_per_a', 0):>10.2e}"
            f"{r.get('force_max_ev_per_a', 0):>10.2e}"
            f"{r.get('stress_mae_ev_per_a3', 0):>10.2e}"
            f"{r.get('equivariance_error', 0):>10.1e}"
            f"{r.get('cp_fit_error', float('nan')):>9.3f}"
        )
