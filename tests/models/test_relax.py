"""Batched FIRE against ASE's own FIRE (and UnitCellFilter) driving the same model."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.filters import UnitCellFilter
from ase.optimize import FIRE

from models.relax import RelaxResult, RelaxSettings, relax
from models.structure import InvalidStructureError, Structure

# Final energies must agree with ASE within this, eV/atom (the bar).
ENERGY_TOL_PER_ATOM = 1e-3
# With EMT in float64 the trajectories are the same to roundoff.
EMT_ENERGY_TOL_PER_ATOM = 1e-9


@dataclass
class _Prediction:
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None


class EMTModel:
    """A model with the library's ``predict`` contract, backed by ASE's EMT."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(
        self, structures: Sequence[Structure], compute_stress: bool = True
    ) -> list[_Prediction | InvalidStructureError]:
        self.calls.append(len(structures))
        out: list[_Prediction | InvalidStructureError] = []
        for i, s in enumerate(structures):
            if int(np.asarray(s.numbers).max()) > 83:
                out.append(InvalidStructureError("unknown_element", "no EMT", i))
                continue
            atoms = s.to_atoms()
            atoms.calc = EMT()
            stress = atoms.get_stress() if compute_stress else None
            out.append(
                _Prediction(atoms.get_potential_energy(), atoms.get_forces(), stress)
            )
        return out


def _rattled_copper(n: int) -> list[Atoms]:
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.55 + 0.04 * k, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def _ase_relax(atoms: Atoms, calc: Calculator, settings: RelaxSettings) -> tuple:
    atoms = atoms.copy()
    atoms.calc = calc
    target = UnitCellFilter(atoms, scalar_pressure=settings.pressure)
    opt = FIRE(target if settings.relax_cell else atoms, logfile=None)
    converged = opt.run(fmax=settings.fmax, steps=settings.max_steps)
    return atoms, opt.nsteps, converged


@pytest.mark.parametrize("relax_cell", [False, True])
def test_batched_fire_follows_ase_fire_step_for_step(relax_cell: bool) -> None:
    structures = _rattled_copper(5)
    settings = RelaxSettings(
        fmax=0.01, max_steps=300, relax_cell=relax_cell, max_batch_structures=2
    )
    results = relax(structures, EMTModel(), settings)

    for atoms, result in zip(structures, results):
        assert isinstance(result, RelaxResult)
        ref, steps, converged = _ase_relax(atoms, EMT(), settings)
        assert result.converged and converged
        assert result.steps == steps
        per_atom = abs(result.energy - ref.get_potential_energy()) / len(ref)
        assert per_atom < EMT_ENERGY_TOL_PER_ATOM
        np.testing.assert_allclose(result.structure.cell, ref.cell.array, atol=1e-8)


def test_structures_join_as_others_converge_so_batches_stay_full() -> None:
    model = EMTModel()
    structures = _rattled_copper(6)
    results = relax(structures, model, RelaxSettings(fmax=0.01, max_batch_structures=3))
    steps = [r.steps + 1 for r in results if isinstance(r, RelaxResult)]

    # full batches until the queue runs dry, then the batch only drains
    first_short = next(i for i, n in enumerate(model.calls) if n < 3)
    tail = model.calls[first_short:]
    assert all(a >= b for a, b in itertools.pairwise(tail))
    assert sum(model.calls) == sum(steps)
    # a static batch would shrink when its first member converged
    assert first_short > min(steps[:3])


def test_pressure_shrinks_the_cell_like_ase() -> None:
    atoms = _rattled_copper(1)[0]
    free = RelaxSettings(fmax=0.01, max_steps=400, relax_cell=True)
    squeezed = RelaxSettings(fmax=0.01, max_steps=400, relax_cell=True, pressure=0.01)
    (at_zero,) = relax([atoms], EMTModel(), free)
    (at_p,) = relax([atoms], EMTModel(), squeezed)
    ref, _, _ = _ase_relax(atoms, EMT(), squeezed)

    assert isinstance(at_zero, RelaxResult) and isinstance(at_p, RelaxResult)
    volume = at_p.structure.to_atoms().get_volume()
    assert volume < at_zero.structure.to_atoms().get_volume()
    np.testing.assert_allclose(at_p.structure.cell, ref.cell.array, atol=1e-6)


def test_a_refused_structure_is_reported_and_the_others_relax() -> None:
    structures = _rattled_copper(3)
    bad = Atoms("U2", positions=[[0, 0, 0], [2.5, 0, 0]])
    results = relax([structures[0], bad, structures[1]], EMTModel())

    assert isinstance(results[1], InvalidStructureError)
    assert results[1].reason == "unknown_element" and results[1].index == 1
    assert isinstance(results[0], RelaxResult) and results[0].converged
    assert isinstance(results[2], RelaxResult) and results[2].converged


def test_max_steps_stops_unconverged_with_the_flag_down() -> None:
    (result,) = relax(_rattled_copper(1), EMTModel(), RelaxSettings(max_steps=2))
    assert isinstance(result, RelaxResult)
    assert result.steps == 2 and not result.converged


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="fmax"):
        RelaxSettings(fmax=0)


class _ModelCalculator(Calculator):
    """An ASE calculator around ``models.load_model(...)``: the reference driver."""

    implemented_properties = ["energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, model: object) -> None:
        super().__init__()
        self.model = model

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):  # type: ignore[no-untyped-def]
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if atoms is None:
            raise ValueError("calculate() needs atoms")
        (pred,) = self.model.predict([Structure.from_atoms(atoms)])  # type: ignore[attr-defined]
        self.results = {
            "energy": pred.energy,
            "forces": pred.forces,
            "stress": pred.stress,
        }


def test_relaxations_with_sevennet_agree_with_ase_within_1e3_ev_per_atom() -> None:
    models = pytest.importorskip("models")
    if not hasattr(models, "load_model"):
        pytest.skip("models.load_model has not landed yet")
    model = models.load_model("sevennet-0", device="cpu", dtype="float64")
    # two atoms, strained and rattled: a few dozen steps, cheap on two cores
    atoms = bulk("Si", "diamond", a=5.55)
    atoms.rattle(0.05, seed=3)
    settings = RelaxSettings(fmax=0.05, max_steps=200, relax_cell=True)

    (result,) = relax([atoms], model, settings)
    ref, _, converged = _ase_relax(atoms, _ModelCalculator(model), settings)

    assert isinstance(result, RelaxResult)
    assert result.converged and converged
    per_atom = abs(result.energy - ref.get_potential_energy()) / len(ref)
    assert per_atom < ENERGY_TOL_PER_ATOM
