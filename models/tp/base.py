"""The tensor-product backend interface used by every convolution.

A convolution couples node features ``x_j`` (irreps ``irreps_in1``) with the edge
spherical harmonics ``Y(r_ij)`` (irreps ``irreps_in2``, multiplicity one each) through
a channelwise ("uvu") tensor product whose path weights are per edge. A backend is a
``torch.nn.Module`` built from a :class:`ConvSpec`; the model never looks inside it.

Layout conventions (the same as e3nn's ``mul_ir`` layout):

* ``x``: ``(n_edges, irreps_in1.dim)``, each block ``(mul, 2l+1)`` flattened.
* ``y``: ``(n_edges, irreps_in2.dim)``.
* ``w``: ``(n_edges, weight_numel)``, one slice of ``mul_in1`` weights per
  instruction, in instruction order.
* output: ``(n_edges, irreps_out.dim)``, one block per instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from e3nn import o3

Instruction = tuple[int, int, int]


@dataclass(frozen=True)
class ConvSpec:
    """What a convolution's tensor product must compute.

    Attributes:
        irreps_in1: irreps of the node features that are sent along edges.
        irreps_in2: irreps of the edge attributes (spherical harmonics).
        irreps_out: irreps of the messages, one ``(mul_in1, ir_out)`` block per
            instruction, sorted by irrep.
        instructions: ``(i_in1, i_in2, i_out)`` triples, mode ``uvu``, sorted by
            ``i_out``; instruction ``k`` owns output block ``k``.
    """

    irreps_in1: o3.Irreps
    irreps_in2: o3.Irreps
    irreps_out: o3.Irreps
    instructions: tuple[Instruction, ...]

    @property
    def weight_numel(self) -> int:
        """Number of per-edge weights: ``mul_in1`` for every instruction."""
        return sum(self.irreps_in1[i1].mul for i1, _, _ in self.instructions)

    def path_degrees(self) -> list[tuple[int, int, int]]:
        """``(l1, l2, l_out)`` of every instruction, in instruction order."""
        return [
            (
                self.irreps_in1[i1].ir.l,
                self.irreps_in2[i2].ir.l,
                self.irreps_out[io].ir.l,
            )
            for i1, i2, io in self.instructions
        ]

    @classmethod
    def channelwise(
        cls, irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, lmax_out: int
    ) -> ConvSpec:
        """All ``uvu`` paths from ``irreps_in1 x irreps_in2`` up to ``lmax_out``.

        The construction (and so the weight order) is SevenNet's: instructions are
        created in ``(i_in1, i_in2, ir_out)`` order, the output blocks are sorted by
        irrep and the instructions by output block.
        """
        mids: list[tuple[int, o3.Irrep]] = []
        raw: list[Instruction] = []
        for i1, (mul, ir1) in enumerate(irreps_in1):
            for i2, (_, ir2) in enumerate(irreps_in2):
                for ir_out in ir1 * ir2:
                    if ir_out.l <= lmax_out:
                        raw.append((i1, i2, len(mids)))
                        mids.append((mul, ir_out))
        sorted_out, perm, _ = o3.Irreps(mids).sort()
        instructions = sorted(((a, b, perm[c]) for a, b, c in raw), key=lambda t: t[2])
        return cls(
            o3.Irreps(irreps_in1),
            o3.Irreps(irreps_in2),
            sorted_out,
            tuple(instructions),
        )


class TPBackend(torch.nn.Module):
    """Base class of a convolution tensor-product backend.

    Subclasses set ``name``, ``exact`` (whether the numbers equal the Clebsch-Gordan
    reference to round-off on the paths it covers) and implement :meth:`forward`.
    :meth:`covers` says which instructions a backend computes; an instruction it does
    not cover contributes zero.
    """

    name: ClassVar[str] = "abstract"
    exact: ClassVar[bool] = False

    def __init__(self, spec: ConvSpec, **options: Any) -> None:
        super().__init__()
        self.spec = spec
        if options:
            raise TypeError(
                f"backend {self.name!r} takes no options, got {sorted(options)}"
            )

    #: set by a model that has already put its weights in :meth:`weight_order`
    weights_reordered: bool = False

    def weight_order(self) -> torch.Tensor | None:
        """Column order in which this backend prefers its per-edge weights.

        ``None`` (the default) means instruction order. A backend returning an
        index ``order`` computes ``w[:, order]`` itself unless a model sets
        :attr:`weights_reordered` after permuting the columns of the network that
        produces the weights (exact: it is only a relabelling).
        """
        return None

    @classmethod
    def covers(cls, spec: ConvSpec) -> list[bool]:
        """Which instructions of ``spec`` this backend computes (all by default)."""
        return [True] * len(spec.instructions)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """Per-edge tensor product.

        Args:
            x: ``(n_edges, irreps_in1.dim)`` sender features.
            y: ``(n_edges, irreps_in2.dim)`` edge spherical harmonics.
            w: ``(n_edges, weight_numel)`` per-edge path weights.

        Returns:
            ``(n_edges, irreps_out.dim)`` messages.
        """
        raise NotImplementedError

    def convolve(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        edge_src: torch.Tensor,
        edge_dst: torch.Tensor,
        num_nodes: int,
    ) -> torch.Tensor:
        """Gather senders, take the product, sum messages onto receivers.

        Backends may override this to fuse the gather and scatter.

        Args:
            x: ``(n_nodes, irreps_in1.dim)`` node features.
            y: ``(n_edges, irreps_in2.dim)`` edge spherical harmonics.
            w: ``(n_edges, weight_numel)`` per-edge path weights.
            edge_src: ``(n_edges,)`` sender index of each edge.
            edge_dst: ``(n_edges,)`` receiver index of each edge.
            num_nodes: number of nodes in the batch.

        Returns:
            ``(n_nodes, irreps_out.dim)`` summed messages.
        """
        messages = self(x.index_select(0, edge_src), y, w)
        out = messages.new_zeros((num_nodes, messages.shape[1]))
        return out.index_add_(0, edge_dst, messages)


_BACKENDS: dict[str, type[TPBackend]] = {}


def register_backend(cls: type[TPBackend]) -> type[TPBackend]:
    """Class decorator: make a backend available by its ``name``."""
    if cls.name in _BACKENDS and _BACKENDS[cls.name] is not cls:
        raise ValueError(f"tensor-product backend {cls.name!r} is registered twice")
    _BACKENDS[cls.name] = cls
    return cls


def parse_backend(text: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` into a name and typed options.

    Values are parsed as int, then float, then kept as strings. ``"cp:rank=32"``
    gives ``("cp", {"rank": 32})``.
    """
    name, _, rest = text.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(
                f"backend option {item!r} in {text!r} is not key=value; "
                "write e.g. 'cp:rank=32'"
            )
        options[key.strip()] = _parse_value(value.strip())
    return name, options


def _parse_value(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def backend_class(name: str) -> type[TPBackend]:
    """The backend class registered under ``name``.

    Raises:
        KeyError: no backend of that name; the message lists the known ones.
    """
    from models.tp import load_builtin_backends

    load_builtin_backends()
    if name not in _BACKENDS:
        raise KeyError(
            f"unknown tensor-product backend {name!r}; known: {sorted(_BACKENDS)}"
        )
    return _BACKENDS[name]


def build_backend(text: str, spec: ConvSpec) -> TPBackend:
    """Build the backend described by ``text`` (``name[:options]``) for ``spec``."""
    name, options = parse_backend(text)
    return backend_class(name)(spec, **options)


def known_backends() -> list[str]:
    """Names of every registered backend."""
    from models.tp import load_builtin_backends

    load_builtin_backends()
    return sorted(_BACKENDS)
