"""``fused``: an exact channelwise tensor product organised for speed.

For every input block ``l1`` the Clebsch-Gordan coefficients of all its paths are
stacked into one constant tensor ``K[m1, m2, (path, m3)]`` (zeros where a coupling
vanishes). Per edge, contracting ``K`` with the spherical harmonics gives a small
matrix ``M_e[m1, (path, m3)]``, and one batched matrix product applies it to every
channel at once. Per-path weights multiply the result, messages are summed onto the
receivers while still grouped by ``l1``, and only then, at node level (far fewer rows
than edges), are the blocks put into e3nn's output order. The numbers are e3nn's
``uvu`` product, reorganised: equal to round-off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3

from models.tp.base import ConvSpec, TPBackend, register_backend


class _Group:
    """The instructions that share one input block."""

    def __init__(self, spec: ConvSpec, i_in1: int, members: list[int]) -> None:
        mul, ir1 = spec.irreps_in1[i_in1]
        self.mul = mul
        self.d1 = ir1.dim
        self.x_slice = spec.irreps_in1.slices()[i_in1]
        self.members = members
        self.widths = [spec.irreps_out[spec.instructions[k][2]].ir.dim for k in members]
        self.width = sum(self.widths)


def _coupling(spec: ConvSpec, group: _Group, dtype: torch.dtype) -> torch.Tensor:
    """``(d1, irreps_in2.dim, width)`` normalised CG coefficients of a group."""
    y_slices = spec.irreps_in2.slices()
    K = torch.zeros(group.d1, spec.irreps_in2.dim, group.width, dtype=torch.float64)
    col = 0
    for k, width in zip(group.members, group.widths, strict=True):
        i1, i2, io = spec.instructions[k]
        l1, l2, l3 = (
            spec.irreps_in1[i1].ir.l,
            spec.irreps_in2[i2].ir.l,
            spec.irreps_out[io].ir.l,
        )
        # e3nn's "component" normalisation with one path per output block
        cg = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)
        K[:, y_slices[i2], col : col + width] = cg
        col += width
    return K.to(dtype)


@register_backend
class FusedTP(TPBackend):
    """Exact ``uvu`` product grouped by input block; see the module docstring."""

    name = "fused"
    exact = True

    def __init__(self, spec: ConvSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        by_input: dict[int, list[int]] = {}
        for k, (i1, _, _) in enumerate(spec.instructions):
            by_input.setdefault(i1, []).append(k)
        self.groups = [_Group(spec, i1, ks) for i1, ks in sorted(by_input.items())]
        for g, group in enumerate(self.groups):
            self.register_buffer(
                f"K{g}", _coupling(spec, group, torch.get_default_dtype())
            )
        self._weight_offsets = self._offsets(spec)
        self._assembly = self._assembly_plan()

    @staticmethod
    def _offsets(spec: ConvSpec) -> list[int]:
        offsets, start = [], 0
        for i1, _, _ in spec.instructions:
            offsets.append(start)
            start += spec.irreps_in1[i1].mul
        return offsets

    def _assembly_plan(self) -> list[tuple[int, int, int]]:
        """For each output block in order: (group, first column, width)."""
        where: dict[int, tuple[int, int, int]] = {}
        for g, group in enumerate(self.groups):
            col = 0
            for k, width in zip(group.members, group.widths, strict=True):
                where[k] = (g, col, width)
                col += width
        return [where[k] for k in range(len(self.spec.instructions))]

    def _grouped(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per group ``(n_edges, mul, width)`` weighted products."""
        out = []
        for g, group in enumerate(self.groups):
            K = getattr(self, f"K{g}")
            M = torch.einsum("ej,ijo->eio", y, K)
            xg = x[:, group.x_slice].reshape(-1, group.mul, group.d1)
            prod = torch.bmm(xg, M)
            weights = torch.stack(
                [
                    w[:, self._weight_offsets[k] : self._weight_offsets[k] + group.mul]
                    for k in group.members
                ],
                dim=-1,
            )
            repeats = torch.tensor(group.widths, device=w.device)
            out.append(prod * weights.repeat_interleave(repeats, dim=-1))
        return out

    def _assemble(self, grouped: list[torch.Tensor]) -> torch.Tensor:
        rows = grouped[0].shape[0]
        blocks = [
            grouped[g][:, :, col : col + width].reshape(rows, -1)
            for g, col, width in self._assembly
        ]
        return torch.cat(blocks, dim=1)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`."""
        return self._assemble(self._grouped(x, y, w))

    def convolve(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        num_nodes: int,
    ) -> torch.Tensor:
        """Gather, multiply and sum per group; order the blocks at node level."""
        grouped = self._grouped(x.index_select(0, edge_src), y, w)
        summed = [
            t.new_zeros((num_nodes, *t.shape[1:])).index_add_(0, edge_dst, t)
            for t in grouped
        ]
        return self._assemble(summed)
