"""Bookkeeping shared by the project's own backends: slices, groups, assembly.

A :class:`~models.tp.base.ConvSpec` lists ``uvu`` instructions; the Gaunt and CP
backends compute them grouped by the first input (and the second), then scale each
path by its per-edge, per-channel weights and write it into the output block the
instruction owns. Uncovered instructions leave their block at zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from e3nn import o3

from models.tp.base import ConvSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Path:
    """One instruction as the backends see it.

    Attributes:
        index: instruction number ``k`` (it owns output block ``k``).
        i2: index of the second input's irrep.
        l3: output degree.
        weight_start: first column of this path's weights in ``w``.
    """

    index: int
    i2: int
    l3: int
    weight_start: int


@dataclass(frozen=True)
class InputGroup:
    """The covered instructions that share one first-input irrep ``i1``."""

    i1: int
    mul: int
    l1: int
    paths: tuple[Path, ...]

    def second_inputs(self) -> list[int]:
        """The distinct ``i2`` of this group, in first-appearance order."""
        return list(dict.fromkeys(p.i2 for p in self.paths))


def group_by_first_input(spec: ConvSpec, covered: list[bool]) -> list[InputGroup]:
    """Group the covered instructions of ``spec`` by their first input irrep."""
    starts: list[int] = []
    offset = 0
    for i1, _, _ in spec.instructions:
        starts.append(offset)
        offset += spec.irreps_in1[i1].mul

    by_i1: dict[int, list[Path]] = {}
    for k, ((i1, i2, io), keep) in enumerate(zip(spec.instructions, covered)):
        if keep:
            l3 = spec.irreps_out[io].ir.l
            by_i1.setdefault(i1, []).append(Path(k, i2, l3, starts[k]))
    return [
        InputGroup(i1, spec.irreps_in1[i1].mul, spec.irreps_in1[i1].ir.l, tuple(ps))
        for i1, ps in sorted(by_i1.items())
    ]


def check_inputs(
    spec: ConvSpec, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
) -> None:
    """Raise ``ValueError`` unless ``x``, ``y``, ``w`` match ``spec``'s layout."""
    expected = {
        "x": (x, spec.irreps_in1.dim),
        "y": (y, spec.irreps_in2.dim),
        "w": (w, spec.weight_numel),
    }
    for name, (tensor, width) in expected.items():
        if tensor.dim() != 2 or tensor.shape[1] != width:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}; expected (n_edges, {width}) "
                f"for irreps_in1={spec.irreps_in1}, irreps_in2={spec.irreps_in2}"
            )
    if not x.shape[0] == y.shape[0] == w.shape[0]:
        raise ValueError(
            f"x, y, w disagree on n_edges: {x.shape[0]}, {y.shape[0]}, {w.shape[0]}"
        )


class OutputAssembler:
    """Collects weighted path outputs and lays them out as ``irreps_out``.

    The weights are split into per-instruction pieces once (``torch.split``, whose
    backward is one concatenation) rather than sliced per path, which would make
    autograd zero-fill a full-size gradient of ``w`` for every path.
    """

    def __init__(
        self, spec: ConvSpec, n_edges: int, like: torch.Tensor, w: torch.Tensor
    ) -> None:
        self._spec = spec
        self._n = n_edges
        self._like = like
        muls = [spec.irreps_in1[i1].mul for i1, _, _ in spec.instructions]
        self._weights = w.split(muls, dim=1)
        self._blocks: dict[int, torch.Tensor] = {}

    def add(self, path: Path, values: torch.Tensor) -> None:
        """Store path ``k``'s output times its weights.

        Args:
            values: ``(n_edges, mul, 2 l3 + 1)`` unweighted path output.
        """
        weights = self._weights[path.index]  # (n_edges, mul)
        self._blocks[path.index] = (values * weights.unsqueeze(-1)).reshape(self._n, -1)

    def add_pair(self, paths: list[Path], values: torch.Tensor) -> None:
        """Store several paths whose outputs are concatenated along the last axis.

        Args:
            paths: the paths, in the order of their output columns.
            values: ``(n_edges, mul, sum of 2 l3 + 1)``.
        """
        widths = [2 * p.l3 + 1 for p in paths]
        for path, part in zip(paths, values.split(widths, dim=-1), strict=True):
            self.add(path, part)

    def result(self) -> torch.Tensor:
        """``(n_edges, irreps_out.dim)``; uncovered blocks are zero."""
        pieces = []
        for k, (_, _, io) in enumerate(self._spec.instructions):
            block = self._blocks.get(k)
            if block is None:
                width = self._spec.irreps_out[io].dim
                block = self._like.new_zeros((self._n, width))
            pieces.append(block)
        if not pieces:
            return self._like.new_zeros((self._n, 0))
        return torch.cat(pieces, dim=1)


def block_slices(irreps: o3.Irreps) -> list[slice]:
    """``irreps.slices()`` as a plain list."""
    return list(irreps.slices())
