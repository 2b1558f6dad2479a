"""Regenerate ``campaign_samples.extxyz``, the sample set of ``make run``.

Sixteen prototype crystals (diamond, zincblende, rocksalt, fcc, bcc, wurtzite), each
twice: strained by -3 % and +3 % in volume-scaling lattice constant and rattled
(seeded), so that a relaxation has work to do. 32 structures, 1-4 atoms each.

    python -m services.data.make_campaign_samples
"""

from __future__ import annotations

import logging
from pathlib import Path

from ase import Atoms
from ase.build import bulk
from ase.io import write

logger = logging.getLogger(__name__)

OUT = Path(__file__).with_name("campaign_samples.extxyz")
# (formula, crystal structure, lattice constant Å, extra kwargs)
PROTOTYPES: tuple[tuple[str, str, float, dict[str, float]], ...] = (
    ("Si", "diamond", 5.43, {}),
    ("Ge", "diamond", 5.66, {}),
    ("C", "diamond", 3.57, {}),
    ("SiC", "zincblende", 4.36, {}),
    ("GaAs", "zincblende", 5.65, {}),
    ("AlP", "zincblende", 5.46, {}),
    ("NaCl", "rocksalt", 5.64, {}),
    ("LiF", "rocksalt", 4.03, {}),
    ("MgO", "rocksalt", 4.21, {}),
    ("Cu", "fcc", 3.61, {}),
    ("Al", "fcc", 4.05, {}),
    ("Ni", "fcc", 3.52, {}),
    ("Fe", "bcc", 2.87, {}),
    ("W", "bcc", 3.16, {}),
    ("GaN", "wurtzite", 3.19, {"c": 5.19}),
    ("ZnO", "wurtzite", 3.25, {"c": 5.21}),
)
STRAINS = (0.97, 1.03)
RATTLE_A = 0.03


def samples() -> list[Atoms]:
    """The sample structures, each labelled ``formula_structure_strain``."""
    frames = []
    for k, (formula, kind, a, extra) in enumerate(PROTOTYPES):
        for j, strain in enumerate(STRAINS):
            c = extra.get("c")
            atoms = bulk(
                formula, kind, a=a * strain, c=None if c is None else c * strain
            )
            atoms.rattle(RATTLE_A, seed=100 * k + j)
            atoms.info["id"] = f"{formula}_{kind}_{strain:.2f}"
            frames.append(atoms)
    return frames


def main() -> None:
    frames = samples()
    write(OUT, frames, format="extxyz")
    logger.warning("wrote %d structures to %s", len(frames), OUT)


if __name__ == "__main__":
    main()
