"""``fused``: an exact channelwise tensor product organised for speed.

For every input block ``l1`` the Clebsch-Gordan coefficients of all its paths are
stacked into one constant matrix ``K[m2, (m1, path, m3)]`` (zeros where a coupling
vanishes). Per edge, one small matrix product with the spherical harmonics gives
``M_e[m1, (path, m3)]``, and one batched matrix product applies it to every channel
at once, channels last so that the elementwise work runs over long contiguous rows.
The per-edge weights arrive grouped by input block (the model permutes its weight
network's output columns once at load, see :meth:`FusedTP.weight_order`); for scalar
inputs (``l1 = 0``) they multiply the channels before the outer product with the
harmonics, otherwise the products, one broadcast per output width. Messages are
summed onto receivers while still grouped; only at node level (far fewer rows than
edges) are the blocks put into e3nn's output order. The numbers are e3nn's ``uvu``
product, reorganised: equal to round-off (tests/models/tp, float64).
"""

from __future__ import annotations

import math
from typing import Any, cast

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
        # paths of equal output width sit side by side, so that their weights
        # broadcast over m3 without materialising an expanded copy
        width_of = {k: spec.irreps_out[spec.instructions[k][2]].ir.dim for k in members}
        self.members = sorted(members, key=lambda k: width_of[k])
        self.widths = [width_of[k] for k in self.members]
        self.width = sum(self.widths)
        classes: dict[int, int] = {}
        for w in self.widths:
            classes[w] = classes.get(w, 0) + 1
        self.classes = sorted(classes.items())  # (width, number of paths)


def _coupling(spec: ConvSpec, group: _Group, dtype: torch.dtype) -> torch.Tensor:
    """``(irreps_in2.dim, d1, width)`` normalised CG coefficients of a group."""
    y_slices = spec.irreps_in2.slices()
    K = torch.zeros(spec.irreps_in2.dim, group.d1, group.width, dtype=torch.float64)
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
        K[y_slices[i2], :, col : col + width] = cg.permute(1, 0, 2)
        col += width
    return K.to(dtype)


@register_backend
class FusedTP(TPBackend):
    """Exact ``uvu`` product grouped by input block; see the module docstring."""

    name = "fused"
    exact = True
    order: torch.Tensor

    def __init__(self, spec: ConvSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        by_input: dict[int, list[int]] = {}
        for k, (i1, _, _) in enumerate(spec.instructions):
            by_input.setdefault(i1, []).append(k)
        self.groups = [_Group(spec, i1, ks) for i1, ks in sorted(by_input.items())]
        for g, group in enumerate(self.groups):
            K = _coupling(spec, group, torch.get_default_dtype())
            self.register_buffer(f"K{g}", K.reshape(K.shape[0], -1))
        self.register_buffer("order", self._order(spec), persistent=False)
        self._x_sizes = [g.x_slice.stop - g.x_slice.start for g in self.groups]
        self._w_sizes = [g.mul * len(g.members) for g in self.groups]
        self._assembly = self._assembly_plan()

    def _order(self, spec: ConvSpec) -> torch.Tensor:
        """Weight columns grouped by input block, path-major within a group (the
        channel index runs fastest, matching the ``(n, path, channel)`` layout)."""
        offsets, start = [], 0
        for i1, _, _ in spec.instructions:
            offsets.append(start)
            start += spec.irreps_in1[i1].mul
        return torch.tensor(
            [
                offsets[k] + u
                for group in self.groups
                for k in group.members
                for u in range(group.mul)
            ]
        )

    def weight_order(self) -> torch.Tensor:
        """See :meth:`TPBackend.weight_order`."""
        return self.order

    def _assembly_plan(self) -> list[tuple[int, int, int]]:
        """For each output block in order: (piece, first column, width).

        A piece is one width class of one group: ``(n_rows, n_paths * width, mul)``,
        in the order :meth:`_pieces` returns them.
        """
        where: dict[int, tuple[int, int, int]] = {}
        piece = 0
        for group in self.groups:
            members = iter(group.members)
            for width, count in group.classes:
                for j in range(count):
                    where[next(members)] = (piece, j * width, width)
                piece += 1
        return [where[k] for k in range(len(self.spec.instructions))]

    def _pieces(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        edge_src: torch.Tensor | None,
    ) -> list[torch.Tensor]:
        """Weighted products, one ``(n_edges, n_paths * width, mul)`` tensor per
        width class of each group (channels last, so that every elementwise
        operation runs over a long contiguous axis).

        ``x`` is per node when ``edge_src`` is given (gathered here, per group, so
        that slicing happens on the small node tensor), else already per edge.
        """
        if not self.weights_reordered:
            w = w.index_select(1, self.order)
        out: list[torch.Tensor] = []
        xs = torch.split(x, self._x_sizes, dim=1)
        ws = torch.split(w, self._w_sizes, dim=1)
        for g, group in enumerate(self.groups):
            xg = xs[g] if edge_src is None else xs[g].index_select(0, edge_src)
            K = cast(torch.Tensor, getattr(self, f"K{g}"))
            M = (y @ K).view(-1, group.d1, group.width)
            wg = ws[g].view(-1, len(group.members), group.mul)
            if group.d1 == 1:
                # scalar inputs: weigh the (n, paths, mul) channels first, then one
                # outer product per width class, instead of weighing the larger
                # (n, width, mul) products
                z = xg.unsqueeze(1) * wg
                out.extend(self._scalar_pieces(group, M[:, 0], z))
                continue
            xg = xg.reshape(-1, group.mul, group.d1).transpose(1, 2)
            prod = torch.bmm(M.transpose(1, 2), xg)
            out.extend(self._weigh(group, prod, wg))
        return out

    @staticmethod
    def _weigh(
        group: _Group, prod: torch.Tensor, wg: torch.Tensor
    ) -> list[torch.Tensor]:
        """``prod`` ``(n, width, mul)`` times per-path weights ``(n, n_paths, mul)``
        broadcast over each path's ``2 l3 + 1`` components, per width class."""
        n, mul = prod.shape[0], group.mul
        prods = torch.split(prod, [w * c for w, c in group.classes], dim=1)
        weights = torch.split(wg, [c for _, c in group.classes], dim=1)
        return [
            (p.reshape(n, c, w, mul) * q.unsqueeze(2)).reshape(n, c * w, mul)
            for p, q, (w, c) in zip(prods, weights, group.classes, strict=True)
        ]

    @staticmethod
    def _scalar_pieces(
        group: _Group, M: torch.Tensor, z: torch.Tensor
    ) -> list[torch.Tensor]:
        """Pieces of a scalar-input group: ``M`` ``(n, width)`` couplings times the
        weighted channels ``z`` ``(n, n_paths, mul)``, per width class."""
        n, mul = z.shape[0], group.mul
        Ms = torch.split(M, [w * c for w, c in group.classes], dim=1)
        zs = torch.split(z, [c for _, c in group.classes], dim=1)
        return [
            (m.reshape(n, c, w, 1) * q.unsqueeze(2)).reshape(n, c * w, mul)
            for m, q, (w, c) in zip(Ms, zs, group.classes, strict=True)
        ]

    def _assemble(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        rows = pieces[0].shape[0]
        blocks = [
            pieces[p][:, col : col + width].transpose(1, 2).reshape(rows, -1)
            for p, col, width in self._assembly
        ]
        return torch.cat(blocks, dim=1)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`."""
        return self._assemble(self._pieces(x, y, w, None))

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
        summed = [
            t.new_zeros((num_nodes, *t.shape[1:])).index_add_(0, edge_dst, t)
            for t in self._pieces(x, y, w, edge_src)
        ]
        return self._assemble(summed)
