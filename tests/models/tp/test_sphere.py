"""The exact tables behind the Gaunt backends."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.tp import sphere

ROUND_OFF = 1e-12


def test_gaunt_ratio_of_scalars_is_one_and_of_dot_product_is_sqrt3() -> None:
    # 1 * 1 = 1; (x . r)(y . r) averaged over the sphere is x . y / 3, and
    # e3nn's 1 x 1 -> 0 path is x . y / sqrt(3), so the ratio is sqrt(3).
    assert sphere.gaunt_ratio(0, 0, 0) == pytest.approx(1.0, abs=ROUND_OFF)
    assert sphere.gaunt_ratio(1, 1, 0) == pytest.approx(math.sqrt(3), abs=ROUND_OFF)


@pytest.mark.parametrize("degrees", [(1, 1, 1), (2, 1, 2), (3, 2, 4), (0, 1, 2)])
def test_gaunt_ratio_is_zero_for_odd_or_impossible_paths(
    degrees: tuple[int, int, int],
) -> None:
    assert sphere.gaunt_ratio(*degrees) == 0.0


def test_gauss_legendre_grid_integrates_harmonics_orthonormally() -> None:
    points, weights = sphere.gauss_legendre_grid(*sphere.grid_resolution(12))
    p = torch.from_numpy(points)
    w = torch.from_numpy(weights)
    y = torch.cat([sphere.real_sh(l, p) for l in range(7)], dim=1)  # (n, 49)
    gram = torch.einsum("g,ga,gb->ab", w, y, y)
    torch.testing.assert_close(
        gram, torch.eye(49, dtype=torch.float64), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("l", [0, 1, 3, 6])
def test_fourier_table_reproduces_harmonics_at_random_points(l: int) -> None:
    rng = np.random.default_rng(l)
    t, p = rng.uniform(0, 2 * np.pi, (2, 50))
    table = sphere.sh_fourier_table(l).numpy()
    u = np.arange(-l, l + 1)
    phase = np.exp(
        1j * (u[None, :, None] * t[:, None, None] + u[None, None, :] * p[:, None, None])
    )
    values = np.einsum("muv,nuv->nm", table, phase)
    points = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1)
    expected = sphere.real_sh(l, torch.from_numpy(points)).numpy()
    np.testing.assert_allclose(values.real, expected, atol=1e-12)
    np.testing.assert_allclose(values.imag, 0.0, atol=1e-12)


def test_degree_beyond_the_tables_is_refused_with_the_limit() -> None:
    with pytest.raises(ValueError, match=f"0..{sphere.MAX_DEGREE}"):
        sphere.check_degree(sphere.MAX_DEGREE + 1)


def test_harmonics_beyond_e3nn_degrees_are_equivariant_and_normalised() -> None:
    from e3nn import o3

    l = sphere.E3NN_SH_MAX + 2
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    points = points / points.norm(dim=1, keepdim=True)
    values = sphere.real_sh(l, points)
    torch.testing.assert_close(
        values.pow(2).sum(dim=1),
        torch.full((20,), 2.0 * l + 1, dtype=torch.float64),
        atol=1e-10,
        rtol=0,
    )
    with sphere.float64_default():
        q = torch.randn(4, generator=gen, dtype=torch.float64)
        rotation = o3.quaternion_to_matrix(q / q.norm())
        wigner = o3.Irrep(l, 1).D_from_matrix(rotation)
    torch.testing.assert_close(
        sphere.real_sh(l, points @ rotation.T), values @ wigner.T, atol=1e-10, rtol=0
    )
