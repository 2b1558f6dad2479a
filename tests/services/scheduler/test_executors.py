"""The in-process executor: single points and relaxations with a model double."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from models.structure import InvalidStructureError, Structure
from services.scheduler.config import SchedulerConfig
from services.scheduler.executors import LocalExecutor, WorkSpec
from services.scheduler.shards import Outcome


@dataclass
class _Prediction:
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None


class EMTModel:
    """The model library's ``predict`` contract over ASE's EMT (Cu only)."""

    def predict(
        self, structures: Sequence[Structure], compute_stress: bool = True
    ) -> list[_Prediction | InvalidStructureError]:
        out: list[_Prediction | InvalidStructureError] = []
        for i, s in enumerate(structures):
            if set(np.asarray(s.numbers).tolist()) != {29}:
                out.append(InvalidStructureError("unknown_element", "Cu only", i))
                continue
            atoms = s.to_atoms()
            atoms.calc = EMT()
            stress = atoms.get_stress() if compute_stress else None
            out.append(
                _Prediction(atoms.get_potential_energy(), atoms.get_forces(), stress)
            )
        return out


def _copper(n: int) -> list[Structure]:
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.55 + 0.03 * k, cubic=True)
        atoms.rattle(0.05, seed=k)
        out.append(Structure.from_atoms(atoms, label=f"cu{k}"))
    return out


def _run(
    spec: WorkSpec, structures: list[Structure]
) -> list[Outcome | InvalidStructureError]:
    executor = LocalExecutor(lambda model, backend: EMTModel())
    return asyncio.run(executor(spec, structures))


def test_single_points_keep_order_and_report_refused_structures() -> None:
    silicon = Structure.from_atoms(bulk("Si"), label="si")
    outcomes = _run(WorkSpec("emt", "", "single_point"), [*_copper(2), silicon])

    assert isinstance(outcomes[0], Outcome) and isinstance(outcomes[1], Outcome)
    assert outcomes[0].structure.label == "cu0" and outcomes[0].stress is not None
    assert isinstance(outcomes[2], InvalidStructureError)
    assert outcomes[2].reason == "unknown_element"


def test_relaxations_lower_the_energy_and_report_steps() -> None:
    structures = _copper(3)
    before = _run(WorkSpec("emt", "", "single_point"), structures)
    spec = WorkSpec("emt", "", "relax", {"fmax": 0.02, "relax_cell": True})
    after = _run(spec, structures)

    for b, a in zip(before, after):
        assert isinstance(a, Outcome) and isinstance(b, Outcome)
        assert a.converged and a.steps > 0 and a.energy < b.energy
        assert np.abs(a.forces).max() < 0.02


def test_unknown_relaxation_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown relaxation parameter"):
        WorkSpec("emt", "", "relax", {"fmax": 0.1, "steps": 3}).relax_settings()


def test_settings_come_from_the_environment_once() -> None:
    config = SchedulerConfig.from_env(
        {"EQUISERVE_CAMPAIGN_CHUNK": "64", "EQUISERVE_DATA_ROOTS": "/a:/b"}
    )
    assert config.chunk_size == 64 and [str(r) for r in config.data_roots] == [
        "/a",
        "/b",
    ]
    with pytest.raises(ValueError, match="EQUISERVE_CAMPAIGN_IN_FLIGHT"):
        SchedulerConfig.from_env({"EQUISERVE_CAMPAIGN_IN_FLIGHT": "many"})
