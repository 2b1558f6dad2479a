"""Our SevenNet reproduces sevenn's own calculator (the independent ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

import models
from tests.models.structures import parity_set

ENERGY_TOL = 2e-5  # eV/atom
FORCE_TOL = 2e-4  # eV/Å
STRESS_TOL = 2e-5  # eV/Å^3

SEVENN_NAMES = {"sevennet-0": "7net-0", "sevennet-l3i5": "7net-l3i5"}
STRUCTURES = parity_set()


@pytest.fixture(scope="module", params=sorted(SEVENN_NAMES))
def reference(request: pytest.FixtureRequest) -> tuple[str, dict]:
    """sevenn's calculator results for every parity structure."""
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator(SEVENN_NAMES[request.param], device="cpu")
    results = {}
    for name, atoms in STRUCTURES.items():
        atoms = atoms.copy()
        atoms.calc = calc
        results[name] = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress() if atoms.pbc.all() else None,
        }
    return request.param, results


@pytest.mark.parametrize("backend", ["e3nn", "fused"])
def test_energy_forces_stress_match_sevenn_calculator(
    reference: tuple[str, dict], backend: str
) -> None:
    name, expected = reference
    model = models.load_model(name, backend=backend)
    results = model.predict(list(STRUCTURES.values()))
    for (label, atoms), got in zip(STRUCTURES.items(), results, strict=True):
        assert isinstance(got, models.Prediction), f"{label}: {got}"
        want = expected[label]
        de = abs(got.energy - want["energy"]) / len(atoms)
        df = np.abs(got.forces - want["forces"]).max()
        assert de < ENERGY_TOL, f"{label}: energy off by {de:.2e} eV/atom"
        assert df < FORCE_TOL, f"{label}: forces off by {df:.2e} eV/Å"
        if want["stress"] is not None:
            assert got.stress is not None
            ds = np.abs(got.stress - want["stress"]).max()
            assert ds < STRESS_TOL, f"{label}: stress off by {ds:.2e} eV/Å^3"
