"""The equivariance error of every registered backend, measured in float64."""

from __future__ import annotations

import logging

import pytest

from models.tp import build_backend, known_backends
from models.tp.checks import equivariance_error
from models.tp.cueq import BackendUnavailableError, cueq_unavailable_reason
from models.tp.sphere import float64_default
from tests.models.tp.conftest import many_to_many_spec, sevennet_like_spec

logger = logging.getLogger(__name__)

ROUND_OFF = 1e-12
# backends whose numbers are an exact equivariant product (CG or Gaunt)
EQUIVARIANT = ("e3nn", "fused", "gaunt-grid", "gaunt-fourier", "cueq")


@pytest.mark.parametrize("name", EQUIVARIANT)
@pytest.mark.parametrize("spec_name", ["sevennet", "parity-l3"])
def test_exact_backends_are_equivariant_to_round_off(name: str, spec_name: str) -> None:
    if name not in known_backends():
        pytest.skip(f"backend {name!r} is not registered here")
    if name == "cueq" and (reason := cueq_unavailable_reason()):
        pytest.skip(reason)
    spec = sevennet_like_spec() if spec_name == "sevennet" else many_to_many_spec(3)
    try:
        # e3nn-based tables are rounded to the default dtype when built
        with float64_default():
            backend = build_backend(name, spec).double()
    except BackendUnavailableError as err:
        pytest.skip(str(err))
    error = equivariance_error(backend)
    logger.info("equivariance error of %s on %s: %.2e", name, spec_name, error)
    assert error < ROUND_OFF


def test_low_rank_cp_is_measurably_not_equivariant() -> None:
    # the check must be able to fail: a rank-2 CP product breaks equivariance
    backend = build_backend("cp:rank=2", sevennet_like_spec())
    assert equivariance_error(backend) > 1e-2


def test_every_registered_backend_declares_exactness_and_coverage() -> None:
    spec = sevennet_like_spec()
    from models.tp import backend_class

    for name in known_backends():
        cls = backend_class(name)
        covered = cls.covers(spec)
        assert len(covered) == len(spec.instructions)
        if cls.exact:
            assert all(covered), name
