"""Gaunt tensor product on a spherical grid (Xie et al., "The Price of Freedom").

Each first-input block and each edge harmonic is sampled on a Gauss-Legendre x
uniform grid, the samples are multiplied pointwise and the product is projected back
onto every output degree by quadrature. The grid resolves degree ``l1 + l2 + l3`` so
the projection is exact: the result equals the Clebsch-Gordan path times
:func:`models.tp.sphere.gaunt_ratio` for every path with ``l1 + l2 + l3`` even.
Paths with ``l1 + l2 + l3`` odd (the cross product ``1 x 1 -> 1``, say) do not exist
in a function product; they contribute zero, so a model trained with CG weights is
a different model here (see ``covers``).

Per-path weights are applied to each projected output degree, so the product is
taken once per ``(i1, i2)`` pair rather than once for all degrees at once.

TODO: the synthesis and analysis are dense ``(2l+1, n_grid)`` matrices, O(L^4) per
pair; separable transforms (an FFT over alpha, Legendre over beta) would give the
paper's O(L^3) and matter only for L beyond ~6, which no served model uses yet.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from models.tp import sphere
from models.tp.base import ConvSpec, TPBackend, register_backend
from models.tp.blocks import (
    InputGroup,
    OutputAssembler,
    block_slices,
    check_inputs,
    group_by_first_input,
)

logger = logging.getLogger(__name__)


GAUNT_NOTE = (
    "Gaunt product: a different operation from CG; a CG-trained model needs its "
    "own weights, so expect a large error without a refit"
)


def gaunt_covers(spec: ConvSpec) -> list[bool]:
    """``True`` for the instructions whose degrees sum to an even number."""
    return [(l1 + l2 + l3) % 2 == 0 for l1, l2, l3 in spec.path_degrees()]


@register_backend
class GauntGridTP(TPBackend):
    """Function product on an exact S2 quadrature grid, per ``(i1, i2)`` pair.

    Options:
        oversample: extra Gauss-Legendre rings and alpha points beyond the exact
            minimum (default 0; useful only to check that the result does not move).
    """

    name = "gaunt-grid"
    exact = False  # exact Gaunt products, but not the CG model's numbers
    note = GAUNT_NOTE

    def __init__(self, spec: ConvSpec, oversample: int = 0, **options: Any) -> None:
        super().__init__(spec, **options)
        sphere.check_spec(spec, self.name)
        if not isinstance(oversample, int) or oversample < 0:
            raise ValueError(f"oversample must be an integer >= 0, got {oversample!r}")
        self.groups = group_by_first_input(spec, self.covers(spec))
        self._in1 = block_slices(spec.irreps_in1)
        self._in2 = block_slices(spec.irreps_in2)
        for g, group in enumerate(self.groups):
            self._build_tables(g, group, oversample)

    @classmethod
    def covers(cls, spec: ConvSpec) -> list[bool]:
        """Only paths with ``l1 + l2 + l3`` even; see :func:`gaunt_covers`."""
        return gaunt_covers(spec)

    def _build_tables(self, g: int, group: InputGroup, oversample: int) -> None:
        """Sample harmonics on the group's grid and fold weights into projections."""
        degrees = [
            group.l1 + self.spec.irreps_in2[p.i2].ir.l + p.l3 for p in group.paths
        ]
        res_beta, res_alpha = sphere.grid_resolution(max(degrees))
        points_np, weights_np = sphere.gauss_legendre_grid(
            res_beta + oversample, res_alpha + oversample
        )
        points = torch.from_numpy(points_np)
        weights = torch.from_numpy(weights_np)

        # (2l1+1, n_grid) synthesis for x; one per second input for y
        self.register_buffer(
            f"x_synth_{g}", sphere.real_sh(group.l1, points).T.contiguous(), False
        )
        for i2 in group.second_inputs():
            l2 = self.spec.irreps_in2[i2].ir.l
            table = sphere.real_sh(l2, points).T.contiguous()
            self.register_buffer(f"y_synth_{g}_{i2}", table, False)

        # (n_grid, sum of 2l3+1) analysis per pair, quadrature weights folded in
        for i2 in group.second_inputs():
            paths = [p for p in group.paths if p.i2 == i2]
            analysis = torch.cat([sphere.real_sh(p.l3, points) for p in paths], dim=1)
            analysis = weights[:, None] * analysis
            self.register_buffer(f"analysis_{g}_{i2}", analysis.contiguous(), False)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`; shapes ``(E, in1.dim)``, ``(E, in2.dim)``,
        ``(E, weight_numel)`` -> ``(E, out.dim)``."""
        check_inputs(self.spec, x, y, w)
        n = x.shape[0]
        out = OutputAssembler(self.spec, n, x, w)
        for g, group in enumerate(self.groups):
            x_block = x[:, self._in1[group.i1]].reshape(n, group.mul, -1)
            x_grid = x_block @ self._table(f"x_synth_{g}", x)  # (E, U, n_grid)
            for i2 in group.second_inputs():
                y_grid = y[:, self._in2[i2]] @ self._table(f"y_synth_{g}_{i2}", x)
                product = x_grid * y_grid.unsqueeze(1)  # (E, U, n_grid)
                values = product @ self._table(f"analysis_{g}_{i2}", x)
                out.add_pair([p for p in group.paths if p.i2 == i2], values)
        return out.result()

    def _table(self, name: str, like: torch.Tensor) -> torch.Tensor:
        table: torch.Tensor = getattr(self, name)
        return table.to(dtype=like.dtype, device=like.device)
