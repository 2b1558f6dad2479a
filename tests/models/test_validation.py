"""Bad input gets a specific error naming the structure, and spoils nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import models
from models.structure import (
    InvalidStructureError,
    Limits,
    Structure,
    validate_structure,
)

SEVENNET_ELEMENTS = frozenset(range(1, 84))


def _nan_atoms() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions[1, 0] = np.nan
    return atoms


def _inf_cell() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.cell[0, 0] = np.inf
    return atoms


def _singular_cell() -> Atoms:
    return Atoms(
        "Si2",
        positions=[[0, 0, 0], [1.3, 1.3, 1.3]],
        cell=[[5, 0, 0], [10, 0, 0], [0, 0, 5]],
        pbc=True,
    )


def _too_close() -> Atoms:
    return Atoms(
        "Si2", positions=[[0, 0, 0], [0.2, 0, 0]], cell=np.eye(3) * 6, pbc=True
    )


def _too_close_through_image() -> Atoms:
    return Atoms(
        "Si2", positions=[[0.05, 0, 0], [5.9, 0, 0]], cell=np.eye(3) * 6, pbc=True
    )


BAD = {
    "unknown_element": Atoms("Og", positions=[[0, 0, 0]], cell=np.eye(3) * 5, pbc=True),
    "non_finite": _nan_atoms(),
    "singular_cell": _singular_cell(),
    "atoms_too_close": _too_close(),
    "empty": Atoms(),
}


@pytest.fixture(scope="module")
def model() -> models.Potential:
    return models.load_model("sevennet-0", limits=Limits(max_atoms=64))


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_structure_gets_its_reason_and_index(
    model: models.Potential, reason: str
) -> None:
    good = bulk("Si", "diamond", a=5.43)
    results = model.predict([good, BAD[reason], good])
    assert isinstance(results[0], models.Prediction)
    assert isinstance(results[2], models.Prediction)
    err = results[1]
    assert isinstance(err, InvalidStructureError)
    assert err.reason == reason and err.index == 1
    assert str(err).startswith("structure 1")
    assert results[0].energy == pytest.approx(results[2].energy, abs=1e-6)


def test_structure_over_the_atom_limit_is_refused(model: models.Potential) -> None:
    big = bulk("Si", "diamond", a=5.43).repeat((3, 3, 4))
    (err,) = model.predict([big])
    assert isinstance(err, InvalidStructureError) and err.reason == "too_many_atoms"
    assert "72 atoms exceed the limit of 64" in str(err)


def test_infinite_cell_and_periodic_image_collision_are_refused() -> None:
    with pytest.raises(InvalidStructureError, match="NaN or infinite"):
        validate_structure(Structure.from_atoms(_inf_cell()), index=0)
    with pytest.raises(InvalidStructureError, match="closer than"):
        validate_structure(Structure.from_atoms(_too_close_through_image()))


def test_unknown_element_message_names_it() -> None:
    with pytest.raises(InvalidStructureError, match="Og") as info:
        validate_structure(
            Structure.from_atoms(BAD["unknown_element"]), SEVENNET_ELEMENTS, index=3
        )
    assert info.value.index == 3


def test_malformed_arrays_are_refused_with_shapes() -> None:
    s = Structure(numbers=np.array([14, 14]), positions=np.zeros((3, 3)))
    with pytest.raises(InvalidStructureError, match=r"shape \(2, 3\)"):
        validate_structure(s)


def test_unknown_model_and_backend_list_the_choices() -> None:
    with pytest.raises(models.UnknownModelError, match="sevennet-0"):
        models.load_model("no-such-model")
    with pytest.raises(models.UnknownBackendError, match="fused"):
        models.load_model("sevennet-0", backend="no-such-backend")
    with pytest.raises(ValueError, match="float64"):
        models.load_model("sevennet-0", dtype="float16")
