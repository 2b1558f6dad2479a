"""Batched FIRE relaxation with in-flight batching and an optional unit-cell filter.

Many structures relax at once: their degrees of freedom are concatenated into one
``(n_rows, 3)`` tensor on the model's device and every FIRE update is a segment
operation over it. A structure that converges (or runs out of steps) leaves the
batch at once and the next queued structure takes its place, so every model call
sees a full batch.

Semantics follow ASE step for step, so that one structure relaxed here follows the
trajectory ASE's ``FIRE`` would follow on it:

* FIRE: ``ase.optimize.FIRE`` with its defaults (dt 0.1, maxstep 0.2 Å, dtmax 1.0,
  Nmin 5, finc 1.1, fdec 0.5, astart 0.1, fa 0.99); the step is capped by the norm
  of the whole displacement of one structure, as ASE does.
* cell: ``ase.filters.UnitCellFilter`` (Tadmor et al., PRB 59, 235 (1999)): the
  degrees of freedom are the positions in the undeformed cell plus the deformation
  gradient scaled by ``cell_factor = n_atoms``; the cell "forces" are the virial
  ``-V (sigma + p I)`` over that factor. We chose it over ``FrechetCellFilter``
  because its update needs no matrix logarithm, which torch lacks.
* convergence: the largest row norm of the (filtered) forces below ``fmax``.

Cell relaxation applies to fully periodic structures only; a structure that is not
periodic along all three axes relaxes its positions alone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from models.structure import InvalidStructureError, Structure, as_structure

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the relaxation needs from a model: ``models.load_model(...)`` fits."""

    def predict(
        self, structures: Sequence[Structure], compute_stress: bool = True
    ) -> list[Any]:
        """One result (with energy, forces, stress) or error per structure."""
        ...


@dataclass(frozen=True)
class RelaxSettings:
    """How to relax.

    Attributes:
        fmax: convergence threshold on the largest force row, eV/Å.
        max_steps: most FIRE steps per structure.
        relax_cell: also relax the cell (periodic structures only).
        pressure: external scalar pressure for the cell, eV/Å^3.
        max_batch_atoms: at most this many atoms in one model call (a single
            larger structure still runs, alone).
        max_batch_structures: at most this many structures in one model call.
        dt, maxstep, dtmax, n_min, finc, fdec, astart, fa: FIRE parameters, as in
            ``ase.optimize.FIRE`` (maxstep in Å).
    """

    fmax: float = 0.05
    max_steps: int = 500
    relax_cell: bool = False
    pressure: float = 0.0
    max_batch_atoms: int = 2048
    max_batch_structures: int = 64
    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99

    def __post_init__(self) -> None:
        if not self.fmax > 0:
            raise ValueError(f"fmax must be > 0 eV/Å, got {self.fmax}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.max_batch_atoms < 1 or self.max_batch_structures < 1:
            raise ValueError(
                "max_batch_atoms and max_batch_structures must be >= 1, got "
                f"{self.max_batch_atoms} and {self.max_batch_structures}"
            )


@dataclass
class RelaxResult:
    """One relaxed structure.

    Attributes:
        structure: the final structure (positions and cell, Å).
        energy: potential energy of the final structure, eV (no pV term).
        forces: ``(n_atoms, 3)`` forces on the final structure, eV/Å.
        stress: ``(6,)`` stress of the final structure, eV/Å^3, or ``None``.
        steps: FIRE steps taken.
        converged: whether the largest force fell below ``fmax``.
    """

    structure: Structure
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    steps: int
    converged: bool


@dataclass
class _System:
    """One structure in the batch, with its FIRE state (scalars) and geometry."""

    index: int
    source: Structure
    orig_cell: np.ndarray  # (3, 3) Å
    with_cell: bool
    cell_factor: float
    dt: float
    a: float
    n_positive: int = 0
    steps: int = 0
    first: bool = True

    @property
    def n_rows(self) -> int:
        return self.source.n_atoms + (3 if self.with_cell else 0)


def relax(
    structures: Sequence[Structure | Any],
    model: Predictor,
    settings: RelaxSettings | None = None,
    on_result: Callable[[int, RelaxResult | InvalidStructureError], None] | None = None,
) -> list[RelaxResult | InvalidStructureError]:
    """Relax every structure with batched FIRE; in-flight batching.

    Args:
        structures: structures or ASE ``Atoms``; none is mutated.
        model: anything with ``predict(structures, compute_stress)`` returning a
            prediction (``energy`` eV, ``forces`` ``(n_atoms, 3)`` eV/Å, ``stress``
            ``(6,)`` eV/Å^3 or ``None``) or an ``InvalidStructureError`` per
            structure, such as ``models.load_model(...)``.
        settings: thresholds, batch sizes and FIRE parameters.
        on_result: called with ``(index, result)`` as soon as a structure leaves
            the batch (results arrive out of order).

    Returns:
        One :class:`RelaxResult` or :class:`InvalidStructureError` per input, in
        input order. A structure the model refuses never spoils the others.
    """
    settings = settings or RelaxSettings()
    device = torch.device(str(getattr(model, "device", "cpu")))
    batch = _FireBatch(settings, device)
    queue = deque(enumerate(as_structure(s) for s in structures))
    results: list[RelaxResult | InvalidStructureError | None] = [None] * len(queue)

    def finish(index: int, outcome: RelaxResult | InvalidStructureError) -> None:
        results[index] = outcome
        if on_result is not None:
            on_result(index, outcome)

    while queue or batch.systems:
        # refill: queued structures join as soon as there is room
        while queue and batch.has_room(queue[0][1]):
            index, structure = queue.popleft()
            batch.add(index, structure)
        for index, outcome in batch.iterate(model):
            finish(index, outcome)

    return [r for r in results if r is not None]


class _FireBatch:
    """The structures relaxing together; rows of all of them in one tensor."""

    def __init__(self, settings: RelaxSettings, device: torch.device) -> None:
        self.s = settings
        self.device = device
        self.systems: list[_System] = []
        self.x = torch.zeros((0, 3), dtype=torch.float64, device=device)
        self.v = torch.zeros_like(self.x)

    def has_room(self, structure: Structure) -> bool:
        """Whether ``structure`` fits in the batch now."""
        if not self.systems:
            return True
        n_atoms = sum(sys.source.n_atoms for sys in self.systems)
        return (
            len(self.systems) < self.s.max_batch_structures
            and n_atoms + structure.n_atoms <= self.s.max_batch_atoms
        )

    def add(self, index: int, structure: Structure) -> None:
        """Put a structure into the batch, with FIRE starting from rest."""
        pbc = np.asarray(structure.pbc, dtype=bool)
        with_cell = self.s.relax_cell and bool(pbc.all())
        orig_cell = np.array(structure.cell, dtype=np.float64)
        cell_factor = float(max(structure.n_atoms, 1))
        system = _System(
            index,
            structure,
            orig_cell,
            with_cell,
            cell_factor,
            self.s.dt,
            self.s.astart,
        )
        rows = np.array(structure.positions, dtype=np.float64).reshape(-1, 3)
        if with_cell:
            # undeformed cell: the deformation gradient is the identity
            rows = np.concatenate([rows, cell_factor * np.eye(3)])
        new = torch.as_tensor(rows, dtype=torch.float64, device=self.device)
        self.systems.append(system)
        self.x = torch.cat([self.x, new])
        self.v = torch.cat([self.v, torch.zeros_like(new)])

    def iterate(
        self, model: Predictor
    ) -> list[tuple[int, RelaxResult | InvalidStructureError]]:
        """Evaluate every structure; emit the finished ones, step the rest."""
        current = [self._structure(i) for i in range(len(self.systems))]
        predictions = model.predict(current, compute_stress=self._need_stress())
        forces = torch.zeros_like(self.x)
        done: list[tuple[int, RelaxResult | InvalidStructureError]] = []
        keep: list[bool] = []
        for i, (sys, pred) in enumerate(zip(self.systems, predictions)):
            if isinstance(pred, Exception):
                error = (
                    pred
                    if isinstance(pred, InvalidStructureError)
                    else (InvalidStructureError("compute_failed", str(pred)))
                )
                done.append((sys.index, error.at(sys.index, sys.source.label)))
                keep.append(False)
                continue
            rows = self._filtered_forces(i, current[i], pred)
            forces[self._slice(i)] = rows
            fmax = (
                float(torch.linalg.vector_norm(rows, dim=1).max()) if len(rows) else 0
            )
            converged = fmax < self.s.fmax
            if converged or sys.steps >= self.s.max_steps:
                done.append((sys.index, self._result(sys, current[i], pred, converged)))
                keep.append(False)
            else:
                keep.append(True)
        forces = self._drop(keep, forces)
        if self.systems:
            self._step(forces)
        return done

    def _need_stress(self) -> bool:
        return any(sys.with_cell for sys in self.systems)

    def _slice(self, i: int) -> slice:
        start = sum(sys.n_rows for sys in self.systems[:i])
        return slice(start, start + self.systems[i].n_rows)

    def _deformation(self, i: int) -> torch.Tensor:
        """``(3, 3)`` deformation gradient ``F`` of system ``i``."""
        sys = self.systems[i]
        if not sys.with_cell:
            return torch.eye(3, dtype=torch.float64, device=self.device)
        rows = self.x[self._slice(i)]
        return rows[sys.source.n_atoms :] / sys.cell_factor

    def _structure(self, i: int) -> Structure:
        """Current structure of system ``i``: positions ``r F^T``, cell ``h F^T``."""
        sys = self.systems[i]
        rows = self.x[self._slice(i)]
        positions = rows[: sys.source.n_atoms]
        cell = sys.orig_cell
        if sys.with_cell:
            f = self._deformation(i)
            positions = positions @ f.T
            cell = sys.orig_cell @ f.T.cpu().numpy()
        return Structure(
            numbers=sys.source.numbers,
            positions=positions.cpu().numpy(),
            cell=np.array(cell),
            pbc=sys.source.pbc,
            label=sys.source.label,
        )

    def _filtered_forces(self, i: int, current: Structure, pred: Any) -> torch.Tensor:
        """``(n_rows, 3)`` forces on the filter's degrees of freedom, eV/Å."""
        sys = self.systems[i]
        # a copy: forces that crossed a process boundary arrive read-only
        f_atoms = torch.as_tensor(
            np.array(pred.forces, dtype=np.float64), device=self.device
        ).reshape(-1, 3)
        if not sys.with_cell:
            return f_atoms
        if pred.stress is None:
            raise ValueError(
                f"structure {sys.index}: the model returned no stress, which a cell "
                "relaxation needs; relax positions only or use a model with stress"
            )
        f = self._deformation(i)
        volume = abs(float(np.linalg.det(current.cell)))
        sigma = _voigt_to_full(np.asarray(pred.stress, dtype=np.float64))
        virial = -volume * (sigma + self.s.pressure * np.eye(3))
        virial_t = torch.as_tensor(virial, device=self.device)
        # virial expressed in the undeformed frame: virial F^{-T}
        virial_t = torch.linalg.solve(f, virial_t.T).T
        return torch.cat([f_atoms @ f, virial_t / sys.cell_factor])

    def _result(
        self, sys: _System, current: Structure, pred: Any, converged: bool
    ) -> RelaxResult:
        stress = None if pred.stress is None else np.asarray(pred.stress, dtype=float)
        return RelaxResult(
            structure=current,
            energy=float(pred.energy),
            forces=np.asarray(pred.forces, dtype=np.float64).reshape(-1, 3),
            stress=stress,
            steps=sys.steps,
            converged=converged,
        )

    def _drop(self, keep: list[bool], forces: torch.Tensor) -> torch.Tensor:
        """Remove the finished systems' rows; returns the remaining forces."""
        if all(keep):
            return forces
        mask = torch.cat(
            [
                torch.full((sys.n_rows,), k, dtype=torch.bool, device=self.device)
                for sys, k in zip(self.systems, keep)
            ]
        )
        self.x, self.v = self.x[mask], self.v[mask]
        self.systems = [sys for sys, k in zip(self.systems, keep) if k]
        return forces[mask]

    def _step(self, forces: torch.Tensor) -> None:
        """One FIRE step for every system, as segment operations over rows."""
        s = self.s
        n_sys = len(self.systems)
        seg = torch.cat(
            [
                torch.full((sys.n_rows,), i, dtype=torch.long, device=self.device)
                for i, sys in enumerate(self.systems)
            ]
        )

        def seg_sum(values: torch.Tensor) -> torch.Tensor:  # (n_rows,) -> (n_sys,)
            out = torch.zeros(n_sys, dtype=values.dtype, device=self.device)
            return out.index_add_(0, seg, values)

        vf = seg_sum((forces * self.v).sum(dim=1))
        f2 = seg_sum((forces * forces).sum(dim=1))
        v2 = seg_sum((self.v * self.v).sum(dim=1))
        dt = torch.tensor([sys.dt for sys in self.systems], dtype=torch.float64)
        a = torch.tensor([sys.a for sys in self.systems], dtype=torch.float64)
        first = torch.tensor([sys.first for sys in self.systems])
        dt, a = dt.to(self.device), a.to(self.device)
        first, uphill = first.to(self.device), (vf <= 0).to(self.device)

        # mix velocity toward the force where moving downhill; stop where not
        scale = torch.where(
            f2 > 0, torch.sqrt(v2) / torch.sqrt(f2.clamp_min(1e-300)), 0
        )
        mixed = (1 - a[seg, None]) * self.v + (a * scale)[seg, None] * forces
        downhill = (~first) & (~uphill)
        stopped = (~first) & uphill
        self.v = torch.where(downhill[seg, None], mixed, self.v)
        self.v = torch.where(stopped[seg, None], torch.zeros_like(self.v), self.v)
        for i, sys in enumerate(self.systems):
            if bool(downhill[i]):
                if sys.n_positive > s.n_min:
                    sys.dt = min(sys.dt * s.finc, s.dtmax)
                    sys.a *= s.fa
                sys.n_positive += 1
            elif bool(stopped[i]):
                sys.a = s.astart
                sys.dt *= s.fdec
                sys.n_positive = 0
            sys.first = False
            sys.steps += 1
        dt = torch.tensor([sys.dt for sys in self.systems], dtype=torch.float64)
        dt = dt.to(self.device)

        # Euler step, capped by the norm of each system's whole displacement
        self.v = self.v + dt[seg, None] * forces
        dr = dt[seg, None] * self.v
        norm = torch.sqrt(seg_sum((dr * dr).sum(dim=1)))
        cap = torch.where(norm > s.maxstep, s.maxstep / norm.clamp_min(1e-300), 1.0)
        self.x = self.x + dr * cap[seg, None]


def _voigt_to_full(voigt: np.ndarray) -> np.ndarray:
    """``(6,)`` Voigt (xx, yy, zz, yz, xz, xy) to a symmetric ``(3, 3)``."""
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
