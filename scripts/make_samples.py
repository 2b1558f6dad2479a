"""Write models/data/samples.extxyz, the small structure set `make run` predicts.

Deterministic (fixed seeds); rerun only to change the set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111, molecule

OUT = Path(__file__).resolve().parents[1] / "models" / "data" / "samples.extxyz"


def samples() -> list[Atoms]:
    """A varied set: bulk, supercells, strained triclinic, slab, molecule, one atom."""
    rng = np.random.default_rng(7)
    si = bulk("Si", "diamond", a=5.43)
    si64 = si.repeat((2, 2, 2))
    si64.rattle(0.05, seed=1)
    nacl = bulk("NaCl", "rocksalt", a=5.64).repeat((2, 2, 2))
    nacl.rattle(0.05, seed=2)
    tri = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))
    tri.set_cell(
        tri.cell.array @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))),
        scale_atoms=True,
    )
    mgo = bulk("MgO", "rocksalt", a=4.21).repeat((2, 2, 2))
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=7.0)
    slab.pbc = (True, True, False)
    water = molecule("H2O")
    water.center(vacuum=5.0)
    li = Atoms("Li", positions=[[0, 0, 0]], cell=np.eye(3) * 3.0, pbc=True)
    gaas = bulk("GaAs", "zincblende", a=5.65).repeat((2, 2, 2))
    frames = [si, si64, nacl, tri, mgo, slab, water, li, gaas]
    names = [
        "Si_prim",
        "Si16_rattled",
        "NaCl16_rattled",
        "Cu8_triclinic",
        "MgO16",
        "Pt111_slab",
        "H2O_molecule",
        "Li_one_atom",
        "GaAs16",
    ]
    for atoms, name in zip(frames, names, strict=True):
        atoms.info["name"] = name
    return frames


if __name__ == "__main__":
    from ase.io import write

    OUT.parent.mkdir(parents=True, exist_ok=True)
    write(OUT, samples(), format="extxyz")
