"""Radial parts of a convolution: basis, envelope, and the per-edge weight network.

The weight network of a layer is a function of one scalar, the edge length. Beyond
evaluating it as an MLP, :class:`RadialTable` tabulates it once on a fine grid with its
exact derivative and evaluates it per edge by piecewise-cubic Hermite interpolation:
the same function to float32 precision at a fraction of the cost, with a first
derivative (forces, stress) that is the derivative of the interpolant.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn


class BesselBasis(nn.Module):
    """``2/r_c * sin(k_n r) / r`` for ``n = 1..num_basis``, with trainable ``k_n``.

    Maps ``(n_edges,)`` lengths in Å to ``(n_edges, num_basis)``.
    """

    def __init__(self, cutoff: float, num_basis: int = 8) -> None:
        super().__init__()
        self.prefactor = 2.0 / cutoff
        freqs = torch.arange(1, num_basis + 1, dtype=torch.float64) * math.pi / cutoff
        self.coeffs = nn.Parameter(freqs.float())

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.coeffs * r) / r


class XPLORCutoff(nn.Module):
    """XPLOR switching function: 1 below ``r_on``, a quartic in r^2 down to 0 at
    ``r_c``. Maps ``(n_edges,)`` to ``(n_edges,)``."""

    def __init__(self, cutoff: float, r_on: float) -> None:
        super().__init__()
        if not 0.0 < r_on < cutoff:
            raise ValueError(f"XPLOR needs 0 < r_on < cutoff, got {r_on} and {cutoff}")
        self.r_on = r_on
        self.r_cut = cutoff

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r2, on2, cut2 = r * r, self.r_on**2, self.r_cut**2
        switch = (cut2 - r2) ** 2 * (cut2 + 2 * r2 - 3 * on2) / (cut2 - on2) ** 3
        return torch.where(r < self.r_on, torch.ones_like(r), switch)


class PolynomialCutoff(nn.Module):
    """Polynomial envelope of order ``p`` (DimeNet), 1 at 0 and 0 at ``r_c``."""

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x, p = r / self.cutoff, self.p
        return (
            1
            - (p + 1) * (p + 2) / 2 * x**p
            + p * (p + 2) * x ** (p + 1)
            - p * (p + 1) / 2 * x ** (p + 2)
        )


class RadialEmbedding(nn.Module):
    """Basis times envelope: ``(n_edges,)`` lengths in Å to ``(n_edges, num_basis)``."""

    def __init__(self, basis: BesselBasis, envelope: nn.Module) -> None:
        super().__init__()
        self.basis = basis
        self.envelope = envelope

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.envelope(r).unsqueeze(-1)


# Grid spacing of the radial tables, Å. The cubic Hermite error scales as h^4 f'''';
# at 1/128 Å it is 3e-7 of each layer's largest weight for SevenNet-0 (measured in
# float64; tests/models/test_radial_table.py bounds it by 1e-6): a few float32 ulps.
TABLE_SPACING = 1.0 / 128.0
# Smallest length tabulated, Å; the basis is singular at 0 and validation refuses
# atoms closer than 0.5 Å anyway.
TABLE_R_MIN = 1e-3


class RadialTable(nn.Module):
    """A tabulated function of the edge length with exact-derivative cubic Hermite
    interpolation.

    ``coeffs[k]`` holds the cubic ``a + b t + c t^2 + d t^3`` of interval ``k`` in the
    local coordinate ``t in [0, 1)``, shape ``(n_intervals, 4, n_out)``.
    """

    def __init__(self, coeffs: torch.Tensor, r0: float, spacing: float) -> None:
        super().__init__()
        self.register_buffer("coeffs", coeffs)
        self.r0 = r0
        self.spacing = spacing

    @classmethod
    def fit(
        cls,
        fn: nn.Module,
        cutoff: float,
        spacing: float = TABLE_SPACING,
        knots: tuple[float, ...] = (),
    ) -> RadialTable:
        """Tabulate ``fn``, mapping ``(n,)`` lengths to ``(n, n_out)``, on
        ``[0, cutoff]``.

        Values and derivatives are evaluated in float64 with forward-mode autodiff.
        ``knots`` are points where ``fn`` is not smooth (an envelope's switch-on
        radius); the spacing is shrunk so that each falls on a grid node.
        """
        n_int = math.ceil(cutoff / spacing)
        for knot in knots:
            steps = round(knot / spacing)
            if steps and abs(steps * spacing - knot) > 1e-12:
                n_int = math.ceil(n_int * knot / (steps * spacing))
        h = cutoff / n_int
        grid = torch.arange(n_int + 1, dtype=torch.float64) * h
        grid[0] = TABLE_R_MIN
        fn64 = _float64_copy(fn)
        with torch.no_grad():
            pair = torch.func.jvp(fn64, (grid,), (torch.ones_like(grid),))
        values, slopes = cast(torch.Tensor, pair[0]), cast(torch.Tensor, pair[1])
        y0, y1 = values[:-1], values[1:]
        d0, d1 = slopes[:-1] * h, slopes[1:] * h
        coeffs = torch.stack(
            (y0, d0, 3 * (y1 - y0) - 2 * d0 - d1, 2 * (y0 - y1) + d0 + d1), dim=1
        )
        return cls(coeffs.to(torch.get_default_dtype()), 0.0, h)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``(n_edges,)`` lengths in Å to ``(n_edges, n_out)`` values."""
        return _TableLookup.apply(r, self.coeffs, self.spacing)


def _float64_copy(fn: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(fn).to(torch.float64)


def _locate(
    r: torch.Tensor, n_int: int, spacing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    s = r / spacing
    idx = s.detach().floor().clamp(0, n_int - 1)
    return idx.long(), (s - idx).unsqueeze(-1)


class _TableLookup(torch.autograd.Function):
    """Hermite evaluation with an analytic first derivative (no double backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        r: torch.Tensor,
        coeffs: torch.Tensor,
        spacing: float,
    ) -> torch.Tensor:
        idx, t = _locate(r, coeffs.shape[0], spacing)
        c = coeffs.index_select(0, idx)
        ctx.save_for_backward(idx, t)
        ctx.coeffs = coeffs  # type: ignore[attr-defined]
        ctx.spacing = spacing  # type: ignore[attr-defined]
        return c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, None, None]:
        idx, t = ctx.saved_tensors  # type: ignore[attr-defined]
        c = ctx.coeffs.index_select(0, idx)  # type: ignore[attr-defined]
        slope = c[:, 1] + t * (2 * c[:, 2] + 3 * t * c[:, 3])
        grad_r = (grad_out * slope).sum(-1) / ctx.spacing  # type: ignore[attr-defined]
        return grad_r, None, None
