"""gaunt-fourier == gaunt-grid == e3nn restricted to even paths with Gaunt scaling."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from models.tp.base import ConvSpec
from models.tp.checks import random_inputs, reference_output
from models.tp.gaunt_fourier import GauntFourierTP
from models.tp.gaunt_grid import GauntGridTP
from tests.models.tp.conftest import many_to_many_spec, sevennet_like_spec

FLOAT64_ATOL = 1e-12
FLOAT64_RTOL = 1e-10
FLOAT32_ATOL = 1e-4
FLOAT32_RTOL = 1e-4
N_EDGES = 5


@pytest.mark.parametrize("l_max", [1, 2, 3, 4, 5, 6])
def test_fourier_and_grid_equal_the_gaunt_scaled_reference(l_max: int) -> None:
    spec = many_to_many_spec(l_max)
    x, y, w = random_inputs(spec, N_EDGES, seed=l_max)
    expected = reference_output(spec, x, y, w, gaunt=True)

    grid = GauntGridTP(spec)(x, y, w)
    fourier = GauntFourierTP(spec)(x, y, w)

    torch.testing.assert_close(grid, expected, atol=FLOAT64_ATOL, rtol=FLOAT64_RTOL)
    torch.testing.assert_close(fourier, expected, atol=FLOAT64_ATOL, rtol=FLOAT64_RTOL)
    torch.testing.assert_close(fourier, grid, atol=FLOAT64_ATOL, rtol=FLOAT64_RTOL)


@pytest.mark.parametrize("l", [4, 7])
def test_single_pair_up_to_twice_the_degree(l: int) -> None:
    # one input irrep each side, every output up to 2l: the grid needs degree 4l;
    # l = 7 needs harmonics of degree 14, beyond e3nn's own
    spec = ConvSpec.channelwise(o3.Irreps(f"3x{l}e"), o3.Irreps(f"1x{l}e"), 2 * l)
    x, y, w = random_inputs(spec, N_EDGES, seed=l)
    expected = reference_output(spec, x, y, w, gaunt=True)
    torch.testing.assert_close(
        GauntGridTP(spec)(x, y, w), expected, atol=FLOAT64_ATOL, rtol=FLOAT64_RTOL
    )
    torch.testing.assert_close(
        GauntFourierTP(spec)(x, y, w), expected, atol=FLOAT64_ATOL, rtol=FLOAT64_RTOL
    )


@pytest.mark.parametrize("backend_cls", [GauntGridTP, GauntFourierTP])
def test_float32_module_matches_the_reference(backend_cls: type) -> None:
    # module.to(float32) must keep every table usable (complex ones included)
    spec = sevennet_like_spec()
    x, y, w = random_inputs(spec, N_EDGES, dtype=torch.float32)
    backend = backend_cls(spec).to(torch.float32)
    expected = reference_output(spec, x.double(), y.double(), w.double(), gaunt=True)
    torch.testing.assert_close(
        backend(x, y, w).double(), expected, atol=FLOAT32_ATOL, rtol=FLOAT32_RTOL
    )


def test_covers_exactly_the_even_paths() -> None:
    spec = many_to_many_spec(3)
    expected = [(l1 + l2 + l3) % 2 == 0 for l1, l2, l3 in spec.path_degrees()]
    assert GauntGridTP.covers(spec) == expected
    assert GauntFourierTP.covers(spec) == expected
    assert not all(expected) and any(expected)


def test_odd_paths_contribute_zero() -> None:
    spec = sevennet_like_spec()
    x, y, w = random_inputs(spec, N_EDGES)
    out = GauntGridTP(spec)(x, y, w)
    slices = spec.irreps_out.slices()
    for (_, _, io), keep in zip(spec.instructions, GauntGridTP.covers(spec)):
        if not keep:
            assert torch.count_nonzero(out[:, slices[io]]) == 0


def test_wrong_input_width_names_both_widths() -> None:
    spec = sevennet_like_spec()
    x, y, w = random_inputs(spec, N_EDGES)
    with pytest.raises(
        ValueError, match=f"expected \\(n_edges, {spec.irreps_in1.dim}\\)"
    ):
        GauntGridTP(spec)(x[:, :-1], y, w)


def test_second_input_with_multiplicity_is_refused() -> None:
    spec = ConvSpec.channelwise(o3.Irreps("2x1e"), o3.Irreps("2x1e"), 2)
    with pytest.raises(ValueError, match="multiplicity 1"):
        GauntGridTP(spec)
