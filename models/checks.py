"""Numerical checks that ship with the model library.

Each returns the largest deviation found, so tests can compare it with a named
tolerance and benchmarks can report it. All are meant to run in float64.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from models.potential import Potential, Prediction


def _predict(model: Potential, atoms: Atoms) -> Prediction:
    (result,) = model.predict([atoms])
    if not isinstance(result, Prediction):
        raise ValueError(f"check structure could not be evaluated: {result}")
    return result


def random_orthogonal(seed: int, reflect: bool) -> np.ndarray:
    """A random 3x3 rotation, times -1 (a reflection) when ``reflect``."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return -q if reflect else q


def equivariance_error(
    model: Potential, atoms: Atoms, seed: int = 0, reflect: bool = False
) -> dict[str, float]:
    """Deviation from E(3) symmetry under a random rotation (and reflection).

    Energy must be invariant, forces rotate as vectors, stress as a rank-2 tensor.

    Returns:
        ``{"energy": eV, "forces": eV/Å, "stress": eV/Å^3}`` max abs deviations.
    """
    R = random_orthogonal(seed, reflect)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ R.T
    rotated.cell = atoms.cell.array @ R.T
    a, b = _predict(model, atoms), _predict(model, rotated)
    out = {
        "energy": abs(a.energy - b.energy),
        "forces": float(np.abs(a.forces @ R.T - b.forces).max()),
    }
    if a.stress is not None and b.stress is not None:
        sa, sb = voigt_to_matrix(a.stress), voigt_to_matrix(b.stress)
        out["stress"] = float(np.abs(R @ sa @ R.T - sb).max())
    return out


def voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    """``(6,)`` Voigt (xx, yy, zz, yz, xz, xy) to a symmetric ``(3, 3)``."""
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def force_fd_error(
    model: Potential, atoms: Atoms, delta: float = 1e-4, n_checks: int = 4
) -> float:
    """Max |F + dE/dx| over a few coordinates, by central differences (eV/Å)."""
    forces = _predict(model, atoms).forces
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(n_checks):
        i, k = int(rng.integers(len(atoms))), int(rng.integers(3))
        energies = []
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions[i, k] += sign * delta
            energies.append(_predict(model, moved).energy)
        numeric = -(energies[0] - energies[1]) / (2 * delta)
        worst = max(worst, abs(numeric - forces[i, k]))
    return worst


def stress_fd_error(model: Potential, atoms: Atoms, delta: float = 1e-5) -> float:
    """Max |stress - (1/V) dE/d(strain)| over the 6 components (eV/Å^3)."""
    stress = _predict(model, atoms).stress
    if stress is None:
        raise ValueError("stress check needs a periodic structure")
    volume = atoms.get_volume()
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    worst = 0.0
    for v, (a, b) in enumerate(pairs):
        energies = []
        for sign in (1.0, -1.0):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = sign * delta
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(_predict(model, strained).energy)
        numeric = (energies[0] - energies[1]) / (2 * delta) / volume
        if a != b:
            numeric /= 2.0  # d/d(eps_ab) moves two symmetric entries
        worst = max(worst, abs(numeric - stress[v]))
    return worst


def batch_consistency_error(model: Potential, frames: list[Atoms]) -> float:
    """Max deviation between one batched call and one call per structure."""
    batched = model.predict(frames)
    worst = 0.0
    for atoms, together in zip(frames, batched, strict=True):
        alone = _predict(model, atoms)
        if not isinstance(together, Prediction):
            raise ValueError(f"batched evaluation failed: {together}")
        worst = max(
            worst,
            abs(alone.energy - together.energy),
            float(np.abs(alone.forces - together.forces).max()),
        )
        if alone.stress is not None and together.stress is not None:
            worst = max(worst, float(np.abs(alone.stress - together.stress).max()))
    return worst
