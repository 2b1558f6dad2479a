"""Numerical checks of tensor-product backends, shared by tests and benchmarks.

* :func:`equivariance_error`: rotate (and invert) the inputs, compare with the
  rotated output.
* :func:`reference_output`: what a backend should return, from e3nn's ``uvu``
  product, with the Gaunt convention (odd paths zero, the others scaled by
  :func:`models.tp.sphere.gaunt_ratio`) when asked.
* :func:`relative_error`: ``||a - b|| / ||b||``.
"""

from __future__ import annotations

import logging

import torch
from e3nn import o3

from models.tp import sphere
from models.tp.base import ConvSpec, TPBackend
from models.tp.e3nn_backend import E3nnTP

logger = logging.getLogger(__name__)


def random_inputs(
    spec: ConvSpec,
    n_edges: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded Gaussian ``x (E, in1.dim)``, ``y (E, in2.dim)``, ``w (E, n_weights)``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = (spec.irreps_in1.dim, spec.irreps_in2.dim, spec.weight_numel)
    x, y, w = (torch.randn(n_edges, d, generator=gen, dtype=dtype) for d in shapes)
    return x.to(device), y.to(device), w.to(device)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (Frobenius), ``0`` when both are zero."""
    scale = float(b.norm())
    diff = float((a - b).norm())
    return diff / scale if scale > 0 else diff


def equivariance_error(
    backend: TPBackend,
    spec: ConvSpec | None = None,
    dtype: torch.dtype = torch.float64,
    n_edges: int = 16,
    seed: int = 0,
) -> float:
    """Relative equivariance error of ``backend`` under a random rotation and parity.

    Computes ``||f(D1 x, D2 y, w) - D3 f(x, y, w)|| / ||f(x, y, w)||`` for a random
    rotation ``R`` composed with the inversion ``-1`` (so parity is checked too);
    the weights are invariant.

    Args:
        backend: any backend; it is run in ``dtype``.
        spec: the spec to check; ``backend.spec`` by default.
        dtype: ``torch.float64`` (default) for round-off-level checks.

    Returns:
        The relative error: round-off (~1e-15 in float64) for an equivariant one.
    """
    spec = spec or backend.spec
    x, y, w = random_inputs(spec, n_edges, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(4, generator=gen, dtype=torch.float64)
    rotation = -o3.quaternion_to_matrix(q / q.norm())  # rotation times inversion
    with sphere.float64_default():  # e3nn builds Wigner D in the default dtype
        d1, d2, d3 = (
            irreps.D_from_matrix(rotation).to(dtype)
            for irreps in (spec.irreps_in1, spec.irreps_in2, spec.irreps_out)
        )
    with torch.no_grad():
        out = backend(x, y, w)
        rotated_first = backend(x @ d1.T, y @ d2.T, w)
    return relative_error(rotated_first, out @ d3.T)


def reference_output(
    spec: ConvSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    gaunt: bool = False,
) -> torch.Tensor:
    """e3nn's ``uvu`` product, or its Gaunt counterpart, ``(E, out.dim)``.

    Args:
        gaunt: zero the paths with ``l1 + l2 + l3`` odd and scale the others by
            :func:`models.tp.sphere.gaunt_ratio`, which is what the Gaunt backends
            compute.
    """
    # e3nn rounds its CG tables to the default dtype when it is built
    with sphere.float64_default():
        reference = E3nnTP(spec).to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        out = reference(x, y, w)
    if not gaunt:
        return out
    scale = torch.cat(
        [
            torch.full(
                (spec.irreps_out[io].dim,),
                sphere.gaunt_ratio(l1, l2, l3),
                dtype=torch.float64,
            )
            for (_, _, io), (l1, l2, l3) in zip(spec.instructions, spec.path_degrees())
        ]
    )
    return out * scale.to(dtype=out.dtype, device=out.device)
