"""cueq: cuEquivariance's channel-wise product equals e3nn's, any instruction subset."""

from __future__ import annotations

import pytest
import torch

from models.tp.base import ConvSpec
from models.tp.checks import random_inputs, reference_output
from models.tp.cueq import CueqTP, cueq_unavailable_reason
from tests.models.tp.conftest import many_to_many_spec, sevennet_like_spec

REASON = cueq_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

N_EDGES = 5


@pytest.mark.parametrize(
    "make_spec", [sevennet_like_spec, lambda: many_to_many_spec(3)]
)
def test_cueq_equals_e3nn(make_spec) -> None:  # type: ignore[no-untyped-def]
    spec = make_spec()
    x, y, w = random_inputs(spec, N_EDGES)
    torch.testing.assert_close(
        CueqTP(spec).double()(x, y, w),
        reference_output(spec, x, y, w),
        atol=1e-12,
        rtol=1e-10,
    )


def test_cueq_maps_a_subset_of_instructions() -> None:
    full = many_to_many_spec(2)
    keep = full.instructions[::2]
    out = [full.irreps_out[io] for _, _, io in keep]
    from e3nn import o3

    spec = ConvSpec(
        full.irreps_in1,
        full.irreps_in2,
        o3.Irreps(out),
        tuple((i1, i2, k) for k, (i1, i2, _) in enumerate(keep)),
    )
    x, y, w = random_inputs(spec, N_EDGES)
    torch.testing.assert_close(
        CueqTP(spec).double()(x, y, w),
        reference_output(spec, x, y, w),
        atol=1e-12,
        rtol=1e-10,
    )
