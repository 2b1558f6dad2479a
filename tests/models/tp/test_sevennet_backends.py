"""SevenNet-0 through the project's backends, via the registry and load_model."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

import models

ROUND_OFF_EV = 1e-9


@pytest.fixture(scope="module")
def rattled_si() -> Atoms:
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=7)
    return atoms


@pytest.fixture(scope="module")
def reference(rattled_si: Atoms) -> models.Prediction:
    model = models.load_model("sevennet-0", "e3nn", dtype="float64", radial_table=False)
    result = model.predict([rattled_si])[0]
    assert isinstance(result, models.Prediction)
    return result


def test_cp_at_full_rank_reproduces_the_exact_model(
    rattled_si: Atoms, reference: models.Prediction
) -> None:
    model = models.load_model(
        "sevennet-0", "cp:rank=48", dtype="float64", radial_table=False
    )
    result = model.predict([rattled_si])[0]
    assert isinstance(result, models.Prediction)
    assert abs(result.energy - reference.energy) < ROUND_OFF_EV
    np.testing.assert_allclose(result.forces, reference.forces, atol=ROUND_OFF_EV)


@pytest.mark.slow
def test_gaunt_runs_sevennet_and_differs_from_it(
    rattled_si: Atoms, reference: models.Prediction
) -> None:
    # SevenNet-0 has odd paths (1 x 1 -> 1, ...): Gaunt drops them, so the result
    # is a different model's; it must run and must not silently equal the CG one
    model = models.load_model("sevennet-0", "gaunt-grid", dtype="float64")
    result = model.predict([rattled_si])[0]
    assert isinstance(result, models.Prediction)
    assert np.isfinite(result.energy)
    assert np.abs(result.forces - reference.forces).max() > 1e-3


def test_registry_marks_gaunt_and_cp_approximate_and_says_why() -> None:
    spec = models.get_spec("sevennet-0")
    for name in ("gaunt-grid", "gaunt-fourier", "cp"):
        info = spec.backend_info(name)
        assert not info.exact
        assert info.note
    assert "l1+l2+l3 odd" in spec.backend_info("gaunt-grid").note
    assert spec.backend_info("cueq").exact
