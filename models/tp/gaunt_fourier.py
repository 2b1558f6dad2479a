"""Gaunt tensor product through 2D Fourier coefficients (Luo et al., ICLR 2024).

Spherical-harmonic coefficients are mapped to the 2D Fourier coefficients of the
same functions on the torus ``(t, p)`` (exact tables in
:mod:`models.tp.sphere`), the product of two functions becomes a 2D convolution of
coefficient arrays, done by a zero-padded FFT, and the result is projected back
onto every output degree with an exact closed-form table. The numbers equal
:mod:`models.tp.gaunt_grid`'s and the Clebsch-Gordan path times
:func:`models.tp.sphere.gaunt_ratio` on paths with ``l1 + l2 + l3`` even; odd paths
contribute zero (see ``covers``).

Per-path weights are applied to each projected output degree, so the convolution is
taken once per ``(i1, i2)`` pair.

TODO: the coefficient tables are dense although only ``v = +-m`` is non-zero in the
azimuthal index, and the FFTs are tiny (at most ``(4L+1)^2``), so on CPU the
per-transform overhead of ``torch.fft`` dominates; exploiting the sparsity, or
folding the DFTs into the tables, would be faster but would no longer be the FFT
method the benchmarks are meant to measure.
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
from models.tp.gaunt_grid import GAUNT_NOTE, gaunt_covers

logger = logging.getLogger(__name__)


def _embedded_table(l: int, l_frame: int) -> torch.Tensor:
    """Fourier table of degree ``l`` centred in a ``(2 l_frame + 1)^2`` frame.

    Returns:
        ``(2l+1, 2 l_frame + 1, 2 l_frame + 1)`` complex128.
    """
    n = 2 * l_frame + 1
    table = torch.zeros((2 * l + 1, n, n), dtype=torch.complex128)
    lo, hi = l_frame - l, l_frame + l + 1
    table[:, lo:hi, lo:hi] = sphere.sh_fourier_table(l)
    return table


@register_backend
class GauntFourierTP(TPBackend):
    """SH -> 2D Fourier, FFT convolution, Fourier -> SH, per ``(i1, i2)`` pair."""

    name = "gaunt-fourier"
    exact = False  # exact Gaunt products, but not the CG model's numbers
    note = GAUNT_NOTE

    def __init__(self, spec: ConvSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        sphere.check_spec(spec, self.name)
        self.groups = group_by_first_input(spec, self.covers(spec))
        self._in1 = block_slices(spec.irreps_in1)
        self._in2 = block_slices(spec.irreps_in2)
        self._frames: list[tuple[int, int]] = []
        for g, group in enumerate(self.groups):
            self._build_tables(g, group)

    @classmethod
    def covers(cls, spec: ConvSpec) -> list[bool]:
        """Only paths with ``l1 + l2 + l3`` even."""
        return gaunt_covers(spec)

    def _build_tables(self, g: int, group: InputGroup) -> None:
        """Fourier tables for the group's inputs and projections for its paths."""
        l2_max = max(self.spec.irreps_in2[i2].ir.l for i2 in group.second_inputs())
        l_prod = group.l1 + l2_max
        n_fft = 2 * l_prod + 1  # linear convolution of the two coefficient arrays
        self._frames.append((l2_max, n_fft))

        # (2l1+1, n1*n1) and (2l2+1, n2*n2) synthesis of Fourier coefficients
        x_table = sphere.sh_fourier_table(group.l1).reshape(2 * group.l1 + 1, -1)
        self._register_complex(f"x_fourier_{g}", x_table)
        for i2 in group.second_inputs():
            l2 = self.spec.irreps_in2[i2].ir.l
            y_table = _embedded_table(l2, l2_max).reshape(2 * l2 + 1, -1)
            self._register_complex(f"y_fourier_{g}_{i2}", y_table)

            # (n_fft^2, sum of 2l3+1) projection of the product onto the outputs
            paths = [p for p in group.paths if p.i2 == i2]
            proj = [sphere.fourier_projection(l_prod, p.l3) for p in paths]
            table = torch.cat(proj, dim=2).reshape(n_fft * n_fft, -1)
            self._register_complex(f"projection_{g}_{i2}", table)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`; shapes ``(E, in1.dim)``, ``(E, in2.dim)``,
        ``(E, weight_numel)`` -> ``(E, out.dim)``."""
        check_inputs(self.spec, x, y, w)
        n = x.shape[0]
        cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        out = OutputAssembler(self.spec, n, x, w)
        for g, group in enumerate(self.groups):
            l2_max, n_fft = self._frames[g]
            n1 = 2 * group.l1 + 1
            x_block = x[:, self._in1[group.i1]].reshape(n, group.mul, n1).to(cdtype)
            x_coef = x_block @ self._table(f"x_fourier_{g}", cdtype, x)
            x_hat = torch.fft.fft2(
                x_coef.reshape(n, group.mul, n1, n1), s=(n_fft, n_fft)
            )
            for i2 in group.second_inputs():
                n2 = 2 * l2_max + 1
                y_coef = y[:, self._in2[i2]].to(cdtype) @ self._table(
                    f"y_fourier_{g}_{i2}", cdtype, x
                )
                y_hat = torch.fft.fft2(y_coef.reshape(n, n2, n2), s=(n_fft, n_fft))
                product = torch.fft.ifft2(x_hat * y_hat.unsqueeze(1))
                flat = product.reshape(n, group.mul, n_fft * n_fft)
                values = (flat @ self._table(f"projection_{g}_{i2}", cdtype, x)).real
                out.add_pair([p for p in group.paths if p.i2 == i2], values)
        return out.result()

    def _register_complex(self, name: str, table: torch.Tensor) -> None:
        """Store a complex table as ``(..., 2)`` reals, so that ``module.to(dtype)``
        (which would drop imaginary parts of complex buffers) converts it safely."""
        self.register_buffer(name, torch.view_as_real(table).contiguous(), False)

    def _table(
        self, name: str, cdtype: torch.dtype, like: torch.Tensor
    ) -> torch.Tensor:
        table: torch.Tensor = getattr(self, name)
        real = torch.float64 if cdtype == torch.complex128 else torch.float32
        return torch.view_as_complex(table.to(dtype=real, device=like.device))
