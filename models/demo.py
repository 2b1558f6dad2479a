"""Predict the bundled sample set and print a table (``python -m models.demo``)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).parent / "data" / "samples.extxyz"


def main() -> None:
    """Load the model, predict each sample one by one, print a table."""
    import torch
    from ase.io import read

    from models import Prediction, load_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--backend", default="fused")
    parser.add_argument("--input", type=Path, default=SAMPLES)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    model = load_model(args.model, args.backend)
    loaded = read(args.input, index=":")
    frames = loaded if isinstance(loaded, list) else [loaded]
    model.predict(frames[:1])  # warm-up
    print(f"{args.model} with the {model.backend} backend on {model.device}\n")
    print(
        f"{'structure':18s} {'atoms':>5s} {'E/atom (eV)':>12s} "
        f"{'max |F| (eV/Å)':>15s} {'time (ms)':>10s}"
    )
    total = time.perf_counter()
    for atoms in frames:
        start = time.perf_counter()
        (result,) = model.predict([atoms])
        ms = 1e3 * (time.perf_counter() - start)
        name = str(atoms.info.get("name", atoms.get_chemical_formula()))
        if isinstance(result, Prediction):
            fmax = float(np.linalg.norm(result.forces, axis=1).max())
            print(
                f"{name:18s} {len(atoms):5d} {result.energy / len(atoms):12.4f} "
                f"{fmax:15.4f} {ms:10.1f}"
            )
        else:
            print(f"{name:18s} {len(atoms):5d} error: {result}")
    start = time.perf_counter()
    model.predict(frames)
    batched = time.perf_counter() - start
    print(
        f"\none by one: {time.perf_counter() - total - batched:.2f} s; "
        f"all {len(frames)} batched: {batched:.2f} s"
    )


if __name__ == "__main__":
    main()
