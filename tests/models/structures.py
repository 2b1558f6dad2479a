"""Deterministic structures shared by the model-library tests."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111, molecule


def _strained_triclinic() -> Atoms:
    rng = np.random.default_rng(3)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))),
        scale_atoms=True,
    )
    atoms.rattle(0.05, seed=4)
    return atoms


def _many_species() -> Atoms:
    rng = np.random.default_rng(5)
    atoms = bulk("NaCl", "rocksalt", a=5.0, cubic=True).repeat((1, 1, 2))
    atoms.numbers = rng.choice([3, 8, 15, 26, 25, 22, 14, 1, 6, 79, 57, 92], len(atoms))
    atoms.rattle(0.05, seed=6)
    return atoms


def _slab() -> Atoms:
    slab = fcc111("Pt", size=(2, 2, 2), vacuum=6.0)
    slab.pbc = (True, True, False)
    slab.rattle(0.02, seed=7)
    return slab


def _molecule() -> Atoms:
    mol = molecule("CH3CH2OH")
    mol.rattle(0.02, seed=8)
    return mol


def _one_atom() -> Atoms:
    return Atoms("Li", positions=[[0.1, 0.2, 0.3]], cell=np.eye(3) * 2.9, pbc=True)


def _si_supercell_rattled() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43).repeat((2, 2, 2))
    atoms.rattle(0.08, seed=9)
    return atoms


def parity_set() -> dict[str, Atoms]:
    """Bulk, supercells, rattled/strained triclinic, slab, molecule, one atom,
    cells shorter than the cutoff, many species."""
    return {
        "si_primitive_short_cell": bulk("Si", "diamond", a=5.43),
        "cu_fcc": bulk("Cu", "fcc", a=3.6),
        "nacl_cubic": bulk("NaCl", "rocksalt", a=5.64, cubic=True),
        "si_supercell_rattled": _si_supercell_rattled(),
        "cu_strained_triclinic": _strained_triclinic(),
        "many_species": _many_species(),
        "pt_slab": _slab(),
        "ethanol_in_vacuum": _molecule(),
        "li_one_atom": _one_atom(),
    }
