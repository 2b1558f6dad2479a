"""Exact tables shared by the Gaunt and CP backends: sphere grids, SH, Fourier bases.

Every table here is computed by the project from e3nn's real spherical harmonics
(``normalization="component"``, so that ``sum_m Y_lm(r)^2 = 2l + 1``) with a
quadrature or a transform that is exact for the degrees involved; nothing is
downloaded. Tables are built in float64 and cached per degree.

Conventions:

* A feature block of degree ``l`` holds the coefficients ``f_m`` of the function
  ``f(r) = sum_m f_m Y_lm(r)`` on the unit sphere.
* The function product is projected back with the normalised measure
  ``dΩ / 4π``: ``h_l3m3 = ∫ f g Y_l3m3 dΩ / 4π``. With this convention the product
  of two scalars is their ordinary product, and the projection onto degree ``l3``
  equals :func:`gaunt_ratio` times e3nn's ``uvu`` path for ``(l1, l2, l3)``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from e3nn import o3

from models.tp.base import ConvSpec

logger = logging.getLogger(__name__)

# Largest degree the tables are built for.
MAX_DEGREE = 24
# Largest degree of e3nn's own spherical harmonics; higher ones come by recursion.
E3NN_SH_MAX = 12
# Relative residual above which a Gaunt tensor is not proportional to the CG tensor.
PROPORTIONALITY_TOL = 1e-10


def check_degree(l: int) -> None:
    """Raise ``ValueError`` for a degree outside ``0..MAX_DEGREE``."""
    if not 0 <= l <= MAX_DEGREE:
        raise ValueError(
            f"spherical-harmonic degree {l} is outside 0..{MAX_DEGREE}; "
            "use a smaller l_max"
        )


def check_spec(spec: ConvSpec, backend: str) -> None:
    """Refuse specs the non-reference backends do not implement.

    Raises:
        ValueError: an ``irreps_in2`` multiplicity is not 1 (edge attributes are
            one spherical harmonic per degree) or a degree exceeds ``MAX_DEGREE``.
    """
    for mul, _ in spec.irreps_in2:
        if mul != 1:
            raise ValueError(
                f"backend {backend!r} needs multiplicity 1 in irreps_in2, got "
                f"{spec.irreps_in2}; pass edge spherical harmonics such as "
                "'1x0e+1x1e+1x2e'"
            )
    for irreps in (spec.irreps_in1, spec.irreps_in2, spec.irreps_out):
        for _, ir in irreps:
            check_degree(ir.l)


def real_sh(l: int, points: torch.Tensor) -> torch.Tensor:
    """e3nn's real spherical harmonics of degree ``l``, component-normalised.

    e3nn implements degrees up to ``E3NN_SH_MAX``; above that the harmonics are
    built by the coupling recursion ``Y_l ∝ (Y_{l-1} ⊗ Y_1 -> l)`` with e3nn's own
    Wigner 3j symbols, which keeps them in the same basis (equivariant under the
    same Wigner D matrices), rescaled so that ``sum_m Y_lm^2 = 2l + 1``.

    Args:
        points: ``(n, 3)`` unit vectors.

    Returns:
        ``(n, 2l + 1)`` float64 values.
    """
    points = points.to(torch.float64)
    if l <= E3NN_SH_MAX:
        with float64_default():
            return o3.spherical_harmonics(
                l, points, normalize=True, normalization="component"
            )
    check_degree(l)
    lower = real_sh(l - 1, points)
    vector = real_sh(1, points)
    with float64_default():
        w3j = o3.wigner_3j(l - 1, 1, l, dtype=torch.float64)
    values = torch.einsum("ni,nj,ijk->nk", lower, vector, w3j)
    # the norm of an equivariant function is constant on the sphere
    scale = math.sqrt((2 * l + 1) / float(values.pow(2).sum(dim=1).mean()))
    return values * scale


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    """Make float64 the default dtype inside the block.

    e3nn builds some constants in the default dtype; tables built under float32
    would be rounded to float32 even when their inputs are float64.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def path_coefficient(l1: int, l2: int, l3: int) -> torch.Tensor:
    """The coefficient tensor of one e3nn ``uvu`` path, ``(2l1+1, 2l2+1, 2l3+1)``.

    e3nn's default normalisation ("component" irreps, "element" paths) gives a path
    that owns its output block and has multiplicity one on the second input the
    weight ``sqrt(2 l3 + 1)`` on the normalised Wigner 3j symbol.
    """
    with float64_default():
        w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
    return math.sqrt(2 * l3 + 1) * w3j


@functools.lru_cache(maxsize=64)
def gauss_legendre_grid(res_beta: int, res_alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """Product quadrature on S2: Gauss-Legendre in ``cos(beta)``, uniform in alpha.

    Exact for every polynomial of degree ``<= min(2 res_beta - 1, res_alpha - 1)``
    in ``(x, y, z)``, so for a product of harmonics of degrees summing to ``D`` when
    ``2 res_beta - 1 >= D`` and ``res_alpha >= D + 1``.

    Returns:
        ``(points (n, 3), weights (n,))`` with ``n = res_beta * res_alpha`` and the
        weights summing to 1 (the measure ``dΩ / 4π``).
    """
    cos_beta, w_beta = np.polynomial.legendre.leggauss(res_beta)
    alpha = 2.0 * np.pi * np.arange(res_alpha) / res_alpha
    sin_beta = np.sqrt(1.0 - cos_beta**2)
    x = sin_beta[:, None] * np.cos(alpha)[None, :]
    z = sin_beta[:, None] * np.sin(alpha)[None, :]
    y = np.broadcast_to(cos_beta[:, None], x.shape)
    points = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    weights = np.broadcast_to((w_beta / 2.0)[:, None] / res_alpha, x.shape).reshape(-1)
    return points, weights.copy()


def grid_resolution(total_degree: int) -> tuple[int, int]:
    """Smallest exact ``(res_beta, res_alpha)`` for a product of total degree ``D``.

    Gauss-Legendre needs ``2 res_beta - 1 >= D``; the uniform alpha grid needs
    ``res_alpha >= D + 1``.
    """
    res_beta = max(1, math.ceil((total_degree + 1) / 2))
    return res_beta, total_degree + 1


@functools.lru_cache(maxsize=1024)
def gaunt_tensor(l1: int, l2: int, l3: int) -> torch.Tensor:
    """``∫ Y_l1m1 Y_l2m2 Y_l3m3 dΩ / 4π`` in component normalisation, float64.

    Computed by an exact Gauss-Legendre quadrature. Zero when ``l1 + l2 + l3`` is
    odd (parity) or the triangle inequality fails.

    Returns:
        ``(2l1+1, 2l2+1, 2l3+1)`` tensor.
    """
    for l in (l1, l2, l3):
        check_degree(l)
    points, weights = gauss_legendre_grid(*grid_resolution(l1 + l2 + l3))
    p = torch.from_numpy(points)
    w = torch.from_numpy(weights)
    y1, y2, y3 = real_sh(l1, p), real_sh(l2, p), real_sh(l3, p)
    return torch.einsum("g,ga,gb,gc->abc", w, y1, y2, y3)


@functools.lru_cache(maxsize=1024)
def gaunt_ratio(l1: int, l2: int, l3: int) -> float:
    """The factor by which a Gaunt path differs from e3nn's ``uvu`` path.

    ``gaunt_tensor(l1, l2, l3) == gaunt_ratio(l1, l2, l3) * path_coefficient(...)``
    to round-off; zero for paths with ``l1 + l2 + l3`` odd, which Gaunt products
    do not have.

    Raises:
        RuntimeError: the two tensors are not proportional (a basis mismatch).
    """
    if (l1 + l2 + l3) % 2 or not abs(l1 - l2) <= l3 <= l1 + l2:
        return 0.0
    gaunt = gaunt_tensor(l1, l2, l3)
    cg = path_coefficient(l1, l2, l3)
    ratio = float((gaunt * cg).sum() / (cg * cg).sum())
    residual = float((gaunt - ratio * cg).norm() / gaunt.norm())
    if residual > PROPORTIONALITY_TOL:
        raise RuntimeError(
            f"Gaunt tensor ({l1},{l2},{l3}) is not proportional to the CG tensor "
            f"(relative residual {residual:.2e}); the SH and 3j bases disagree"
        )
    return ratio


@functools.lru_cache(maxsize=64)
def sh_fourier_table(l: int) -> torch.Tensor:
    """2D Fourier coefficients of the degree-``l`` harmonics on the torus.

    The sphere is parametrised by ``r(t, p) = (sin t cos p, cos t, sin t sin p)``
    with ``t, p`` in ``[0, 2π)`` (the polar angle extended to a full period). Each
    ``Y_lm(r(t, p))`` is a trigonometric polynomial of degree ``<= l`` in ``t`` and
    in ``p``, so a ``(2l+1) x (2l+1)`` uniform sampling and an FFT give its
    coefficients exactly.

    Returns:
        ``(2l+1, 2l+1, 2l+1)`` complex128 tensor ``F[m, u + l, v + l]`` with
        ``Y_lm(r(t, p)) = sum_{u,v} F[m, u + l, v + l] exp(i (u t + v p))``.
    """
    check_degree(l)
    n = 2 * l + 1
    angles = 2.0 * np.pi * np.arange(n) / n
    t, p = np.meshgrid(angles, angles, indexing="ij")
    points = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1)
    # e3nn normalises its input; the torus points are already unit vectors
    values = real_sh(l, torch.from_numpy(points.reshape(-1, 3))).numpy()
    values = values.reshape(n, n, n).transpose(2, 0, 1)
    coeffs = np.fft.fftshift(np.fft.fft2(values) / (n * n), axes=(1, 2))
    return torch.from_numpy(np.ascontiguousarray(coeffs))


def _polar_integral(n: np.ndarray) -> np.ndarray:
    """``∫_0^π exp(i n t) sin t dt`` for integer ``n`` (complex array)."""
    n = np.asarray(n)
    out = np.zeros(n.shape, dtype=np.complex128)
    even = n % 2 == 0
    out[even] = 2.0 / (1.0 - n[even].astype(np.float64) ** 2)
    out[n == 1] = 1j * np.pi / 2.0
    out[n == -1] = -1j * np.pi / 2.0
    return out


@functools.lru_cache(maxsize=256)
def fourier_projection(l_in: int, l_out: int) -> torch.Tensor:
    """Projection of a torus Fourier series of degree ``l_in`` onto degree ``l_out``.

    For ``h(t, p) = sum_{u,v} H[u, v] exp(i (u t + v p))`` with ``|u|, |v| <= l_in``,
    ``(∫ h Y_l_out,m dΩ) / 4π = sum_{u,v} H[u, v] B[u, v, m]`` over the sphere
    (``t`` in ``[0, π]``). Exact: the azimuthal integral selects ``v' = -v`` and the
    polar integral ``∫ exp(i n t) sin t dt`` is known in closed form.

    Returns:
        ``(2 l_in + 1, 2 l_in + 1, 2 l_out + 1)`` complex128 tensor.
    """
    f_out = sh_fourier_table(l_out).numpy()  # (m, u', v')
    u = np.arange(-l_in, l_in + 1)
    u_prime = np.arange(-l_out, l_out + 1)
    polar = _polar_integral(u[:, None] + u_prime[None, :])  # (u, u')
    table = np.zeros((2 * l_in + 1, 2 * l_in + 1, 2 * l_out + 1), dtype=np.complex128)
    for v in range(-min(l_in, l_out), min(l_in, l_out) + 1):
        # the azimuthal integral is 2π when v' = -v; 2π / 4π = 1/2
        column = f_out[:, :, l_out - v]  # (m, u')
        table[:, v + l_in, :] = 0.5 * polar @ column.T
    return torch.from_numpy(table)
