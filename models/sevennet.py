"""The SevenNet (NequIP-style) architecture, written on e3nn primitives.

One forward pass over a :class:`~models.graph.GraphBatch` gives, per structure, the
energy (eV) and, by automatic differentiation, forces (eV/Å) and stress (eV/Å^3, ASE's
sign convention: ``(1/V) dE/d(strain)``). The convolution's tensor product is a
pluggable backend (:mod:`models.tp`); the radial weight networks run as MLPs or, when
asked, as :class:`~models.radial.RadialTable` interpolants.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn

from models.graph import GraphBatch
from models.radial import (
    BesselBasis,
    PolynomialCutoff,
    RadialEmbedding,
    RadialTable,
    XPLORCutoff,
)
from models.tp import ConvSpec, build_backend

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SevenNetConfig:
    """Hyper-parameters of a SevenNet model (read from its checkpoint).

    Attributes:
        species: atomic number of each type index, in the checkpoint's type order.
        cutoff: neighbour cutoff, Å.
        num_basis: number of Bessel functions.
        envelope: ``("XPLOR", r_on)`` or ``("poly_cut", p)``.
        irreps: node irreps before the first and after every layer.
        radial_hidden: hidden widths of each layer's weight network.
    """

    species: tuple[int, ...]
    cutoff: float
    num_basis: int
    envelope: tuple[str, float]
    irreps: tuple[str, ...]
    radial_hidden: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        return len(self.irreps) - 1

    @property
    def lmax_edge(self) -> int:
        return max(o3.Irreps(i).lmax for i in self.irreps)


def _gate(irreps_out: o3.Irreps) -> e3nn_nn.Gate:
    """Scalars through SiLU; each l > 0 block gated by its own SiLU scalars."""
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    gates = o3.Irreps([(m, "0e") for m, _ in gated])
    silu = torch.nn.functional.silu
    return e3nn_nn.Gate(
        scalars, [silu] * len(scalars), gates, [silu] * len(gates), gated
    )


class Interaction(nn.Module):
    """Self-connection, linear, convolution, linear, residual add, gate."""

    denominator: torch.Tensor

    def __init__(
        self,
        irreps_x: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        radial_layers: list[int],
        backend: str,
    ) -> None:
        super().__init__()
        self.gate = _gate(irreps_out)
        gate_in = self.gate.irreps_in
        self.spec = ConvSpec.channelwise(irreps_x, irreps_sh, irreps_out.lmax)
        self.self_connection = o3.Linear(irreps_x, gate_in, biases=False)
        self.linear_1 = o3.Linear(irreps_x, irreps_x, biases=False)
        self.radial_mlp = e3nn_nn.FullyConnectedNet(
            [*radial_layers, self.spec.weight_numel], torch.nn.functional.silu
        )
        self.tp = build_backend(backend, self.spec)
        self.linear_2 = o3.Linear(
            self.spec.irreps_out.simplify(), gate_in, biases=False
        )
        self.register_buffer("denominator", torch.ones(()))

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        weights: torch.Tensor,
        graph: GraphBatch,
    ) -> torch.Tensor:
        """Update node features.

        Args:
            x: ``(n_atoms, irreps_x.dim)`` node features.
            sh: ``(n_edges, irreps_sh.dim)`` edge spherical harmonics.
            weights: ``(n_edges, weight_numel)`` per-edge path weights.
            graph: the batch (edge indices).

        Returns:
            ``(n_atoms, irreps_out.dim)`` new node features.
        """
        skip = self.self_connection(x)
        h = self.linear_1(x)
        h = self.tp.convolve(h, sh, weights, graph.edge_src, graph.edge_dst, x.shape[0])
        h = self.linear_2(h / self.denominator)
        return self.gate(h + skip)


class SevenNet(nn.Module):
    """SevenNet-0 style potential. See the module docstring."""

    shift: torch.Tensor
    scale: torch.Tensor
    type_of_z: torch.Tensor

    def __init__(self, config: SevenNetConfig, backend: str = "e3nn") -> None:
        super().__init__()
        self.config = config
        envelope = (
            XPLORCutoff(config.cutoff, config.envelope[1])
            if config.envelope[0] == "XPLOR"
            else PolynomialCutoff(config.cutoff, int(config.envelope[1]))
        )
        self.radial = RadialEmbedding(
            BesselBasis(config.cutoff, config.num_basis), envelope
        )
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.lmax_edge, p=1)
        self.sh = o3.SphericalHarmonics(
            self.irreps_sh, normalize=True, normalization="component"
        )
        n_types = len(config.species)
        self.embedding = o3.Linear(
            o3.Irreps(f"{n_types}x0e"), o3.Irreps(config.irreps[0]), biases=False
        )
        radial_layers = [config.num_basis, *config.radial_hidden]
        self.layers = nn.ModuleList(
            Interaction(
                o3.Irreps(config.irreps[t]),
                o3.Irreps(config.irreps[t + 1]),
                self.irreps_sh,
                radial_layers,
                backend,
            )
            for t in range(config.num_layers)
        )
        last = o3.Irreps(config.irreps[-1])
        hidden = o3.Irreps(f"{last.dim // 2}x0e")
        self.readout_1 = o3.Linear(last, hidden, biases=False)
        self.readout_2 = o3.Linear(hidden, o3.Irreps("1x0e"), biases=False)
        self.register_buffer("shift", torch.zeros(n_types))
        self.register_buffer("scale", torch.ones(n_types))
        type_of_z = torch.full((119,), -1, dtype=torch.long)
        type_of_z[list(config.species)] = torch.arange(n_types)
        self.register_buffer("type_of_z", type_of_z, persistent=False)
        self.radial_tables: nn.ModuleList | None = None

    @property
    def interactions(self) -> list[Interaction]:
        """The interaction blocks, typed."""
        return [cast(Interaction, layer) for layer in self.layers]

    def adopt_backend_weight_order(self) -> None:
        """Permute each weight network's output columns into the order its backend
        prefers (:meth:`TPBackend.weight_order`); call once after loading weights.
        A relabelling only: the numbers do not change."""
        for layer in self.interactions:
            order = layer.tp.weight_order()
            if order is None or layer.tp.weights_reordered:
                continue
            last = layer.radial_mlp[-1]
            with torch.no_grad():
                last.weight.copy_(last.weight[:, order.to(last.weight.device)])
            layer.tp.weights_reordered = True

    def tabulate_radial(self) -> None:
        """Replace every layer's weight MLP by a :class:`RadialTable` of
        ``mlp(embedding(r))``; exact to float32 precision (see models/radial.py)."""
        envelope = self.radial.envelope
        knots = (envelope.r_on,) if isinstance(envelope, XPLORCutoff) else ()
        self.radial_tables = nn.ModuleList(
            RadialTable.fit(
                nn.Sequential(self.radial, layer.radial_mlp),
                self.config.cutoff,
                knots=knots,
            ).to(self.shift.device)
            for layer in self.interactions
        )

    def forward(
        self, graph: GraphBatch, forces: bool = True, stress: bool = True
    ) -> dict[str, torch.Tensor]:
        """Energies and their derivatives for every structure in ``graph``.

        Args:
            graph: the batch, already on this model's device and dtype.
            forces: compute forces.
            stress: compute stress (meaningful for periodic cells only).

        Returns:
            ``energy`` ``(n_systems,)`` eV; ``forces`` ``(n_atoms, 3)`` eV/Å;
            ``stress`` ``(n_systems, 6)`` eV/Å^3 in Voigt order xx, yy, zz, yz, xz, xy.
        """
        positions, cell = graph.positions, graph.cell
        strain = None
        if forces:
            positions = positions.detach().requires_grad_(True)
        if stress:
            strain = torch.zeros_like(cell).requires_grad_(True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            positions_s = positions + torch.bmm(
                positions.unsqueeze(1), sym.index_select(0, graph.batch)
            ).squeeze(1)
            cell_s = cell + torch.bmm(cell, sym)
        else:
            positions_s, cell_s = positions, cell

        with torch.set_grad_enabled(forces or stress):
            energy = self._energy(graph, positions_s, cell_s)
        out = {"energy": energy.detach()}
        inputs = [t for t in (positions if forces else None, strain) if t is not None]
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs)
            if forces:
                out["forces"] = -grads[0]
            if stress:
                volume = torch.linalg.det(cell).abs().clamp_min(1e-12)
                s = grads[-1] / volume[:, None, None]
                out["stress"] = s[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return out

    def _energy(
        self, graph: GraphBatch, positions: torch.Tensor, cell: torch.Tensor
    ) -> torch.Tensor:
        """``(n_systems,)`` energies in eV."""
        vectors = graph.edge_vectors(positions, cell)
        lengths = torch.linalg.norm(vectors, dim=-1)
        sh = self.sh(vectors)
        types = self.type_of_z.index_select(0, graph.species)
        onehot = nn.functional.one_hot(types, len(self.config.species)).to(sh.dtype)

        x = self.embedding(onehot)
        embedded = None if self.radial_tables is not None else self.radial(lengths)
        for t, layer in enumerate(self.interactions):
            if self.radial_tables is not None:
                weights = self.radial_tables[t](lengths)
            else:
                weights = layer.radial_mlp(embedded)
            x = layer(x, sh, weights, graph)

        atomic = self.readout_2(self.readout_1(x)).squeeze(-1)
        atomic = atomic * self.scale[types] + self.shift[types]
        energy = atomic.new_zeros(graph.n_systems)
        return energy.index_add(0, graph.batch, atomic)
