"""Symmetry, derivative and batching properties of the model, in float64."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

import models
from models.checks import (
    batch_consistency_error,
    equivariance_error,
    force_fd_error,
    random_orthogonal,
    stress_fd_error,
)
from tests.models.structures import parity_set

ROUND_OFF = 1e-9  # float64 model, eV and eV/Å
FD_FORCE_TOL = 1e-6  # eV/Å, central differences with a 1e-4 Å step
FD_STRESS_TOL = 1e-7  # eV/Å^3
STRUCTURES = parity_set()
CHECKED = ["cu_strained_triclinic", "many_species", "pt_slab", "ethanol_in_vacuum"]


@pytest.fixture(scope="module", params=["e3nn", "fused"])
def model64(request: pytest.FixtureRequest) -> models.Potential:
    return models.load_model("sevennet-0", backend=request.param, dtype="float64")


# SevenNet-0 is SO(3)-equivariant only (is_parity: False): its edge harmonics are all
# declared even, so paths such as 1x1->1 (a cross product) change sign under a mirror.
# Its reflection deviation is a property of the model: sevenn's own calculator shows
# the same one (6.3e-3 eV/Å on the many-species cell), and every exact backend
# reproduces it.
SEVENN_FLOAT32_FORCE_TOL = 2e-4  # eV/Å, as in the parity test


@pytest.mark.parametrize("name", CHECKED)
def test_energy_invariant_forces_and_stress_equivariant_under_rotation(
    model64: models.Potential, name: str
) -> None:
    errors = equivariance_error(model64, STRUCTURES[name], seed=11)
    assert max(errors.values()) < ROUND_OFF, errors


def test_reflection_deviation_is_the_models_own_and_small() -> None:
    atoms = STRUCTURES["many_species"]
    deviations = []
    for backend in ("e3nn", "fused"):
        model = models.load_model("sevennet-0", backend=backend, dtype="float64")
        deviations.append(equivariance_error(model, atoms, seed=11, reflect=True))
    ref, fused = deviations
    for key in ref:
        assert abs(ref[key] - fused[key]) < ROUND_OFF, (ref, fused)
    assert abs(ref["forces"] - _sevenn_reflection_force_deviation(atoms)) < (
        SEVENN_FLOAT32_FORCE_TOL
    )


def _sevenn_reflection_force_deviation(atoms: Atoms) -> float:
    from sevenn.calculator import SevenNetCalculator

    R = random_orthogonal(11, reflect=True)
    mirrored = atoms.copy()
    mirrored.positions = atoms.positions @ R.T
    mirrored.cell = atoms.cell.array @ R.T
    calc = SevenNetCalculator("7net-0", device="cpu")
    forces = []
    for item in (atoms.copy(), mirrored):
        item.calc = calc
        forces.append(item.get_forces())
    return float(np.abs(forces[0] @ R.T - forces[1]).max())


def test_translation_and_permutation_invariance(model64: models.Potential) -> None:
    atoms = STRUCTURES["many_species"]
    moved = atoms.copy()
    moved.positions += np.array([1.3, -0.7, 2.9])
    perm = np.random.default_rng(0).permutation(len(atoms))
    shuffled = atoms[perm]
    base, trans, perm_res = model64.predict([atoms, moved, shuffled])
    assert isinstance(base, models.Prediction)
    assert isinstance(trans, models.Prediction)
    assert isinstance(perm_res, models.Prediction)
    assert abs(base.energy - trans.energy) < ROUND_OFF
    np.testing.assert_allclose(trans.forces, base.forces, atol=ROUND_OFF, rtol=0)
    assert abs(base.energy - perm_res.energy) < ROUND_OFF
    np.testing.assert_allclose(
        perm_res.forces, base.forces[perm], atol=ROUND_OFF, rtol=0
    )


@pytest.mark.parametrize("name", ["cu_strained_triclinic", "ethanol_in_vacuum"])
def test_forces_are_minus_energy_gradient(model64: models.Potential, name: str) -> None:
    assert force_fd_error(model64, STRUCTURES[name]) < FD_FORCE_TOL


@pytest.mark.parametrize("name", ["cu_strained_triclinic", "si_primitive_short_cell"])
def test_stress_is_strain_derivative(model64: models.Potential, name: str) -> None:
    assert stress_fd_error(model64, STRUCTURES[name]) < FD_STRESS_TOL


def test_batched_equals_one_by_one(model64: models.Potential) -> None:
    assert batch_consistency_error(model64, list(STRUCTURES.values())) < ROUND_OFF


def test_fused_equals_e3nn_to_round_off() -> None:
    frames = list(STRUCTURES.values())
    ref = models.load_model("sevennet-0", backend="e3nn", dtype="float64")
    fused = models.load_model("sevennet-0", backend="fused", dtype="float64")
    for a, b in zip(ref.predict(frames), fused.predict(frames), strict=True):
        assert isinstance(a, models.Prediction) and isinstance(b, models.Prediction)
        assert abs(a.energy - b.energy) < ROUND_OFF
        np.testing.assert_allclose(b.forces, a.forces, atol=ROUND_OFF, rtol=0)


def test_inputs_are_not_mutated(model64: models.Potential) -> None:
    frames = [a.copy() for a in STRUCTURES.values()]
    before = [
        (a.positions.copy(), a.cell.array.copy(), a.numbers.copy()) for a in frames
    ]
    model64.predict(frames)
    for atoms, (pos, cell, numbers) in zip(frames, before, strict=True):
        np.testing.assert_array_equal(atoms.positions, pos)
        np.testing.assert_array_equal(atoms.cell.array, cell)
        np.testing.assert_array_equal(atoms.numbers, numbers)
        assert atoms.calc is None
