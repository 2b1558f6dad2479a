"""Structures to batched graphs.

Many structures (periodic, slab, molecule) are packed into one disjoint graph. Edge
``e`` runs from sender ``edge_src[e]`` (atom j) to receiver ``edge_dst[e]`` (atom i);
its vector is ``r_ij = x_j - x_i + shift_e @ cell``, Å. Neighbour lists come from
vesin, which handles mixed periodicity and cells shorter than the cutoff (many
images of one atom).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from vesin import NeighborList

from models.structure import Structure

logger = logging.getLogger(__name__)


def neighbour_pairs(
    structure: Structure, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All ordered pairs closer than ``cutoff``, periodic images included.

    Args:
        structure: the structure (positions in Å).
        cutoff: radius, Å.

    Returns:
        ``(i, j, shifts, distances)``: receivers ``(n_pairs,)``, senders
        ``(n_pairs,)``, integer cell shifts ``(n_pairs, 3)`` and distances
        ``(n_pairs,)`` in Å, with ``r_ij = x_j - x_i + shift @ cell``.
    """
    pbc = np.asarray(structure.pbc, dtype=bool)
    cell = np.asarray(structure.cell, dtype=np.float64)
    if not pbc.any():
        cell = np.zeros((3, 3))
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts, dist = nl.compute(
        np.asarray(structure.positions, dtype=np.float64),
        cell,
        [bool(p) for p in pbc],
        quantities="ijSd",
    )
    return (
        i.astype(np.int64),
        j.astype(np.int64),
        shifts.astype(np.float64),
        dist,
    )


@dataclass
class GraphBatch:
    """A batch of structures as one disjoint graph.

    Attributes:
        species: ``(n_atoms,)`` atomic numbers.
        positions: ``(n_atoms, 3)`` positions, Å.
        cell: ``(n_systems, 3, 3)`` lattice vectors as rows, Å.
        pbc: ``(n_systems, 3)`` periodicity.
        batch: ``(n_atoms,)`` index of the structure each atom belongs to.
        edge_src: ``(n_edges,)`` sender atom of each edge.
        edge_dst: ``(n_edges,)`` receiver atom of each edge.
        edge_shift: ``(n_edges, 3)`` integer cell shifts (float dtype).
        n_atoms: ``(n_systems,)`` atoms per structure.
    """

    species: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    edge_shift: torch.Tensor
    n_atoms: torch.Tensor

    @property
    def n_systems(self) -> int:
        return int(self.n_atoms.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> GraphBatch:
        """Move to ``device``; floating tensors take ``dtype``."""
        return GraphBatch(
            species=self.species.to(device),
            positions=self.positions.to(device, dtype),
            cell=self.cell.to(device, dtype),
            pbc=self.pbc.to(device),
            batch=self.batch.to(device),
            edge_src=self.edge_src.to(device),
            edge_dst=self.edge_dst.to(device),
            edge_shift=self.edge_shift.to(device, dtype),
            n_atoms=self.n_atoms.to(device),
        )

    def edge_vectors(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """``(n_edges, 3)`` edge vectors ``x_j - x_i + shift @ cell``, Å.

        Args:
            positions: ``(n_atoms, 3)``, possibly strained, Å.
            cell: ``(n_systems, 3, 3)``, possibly strained, Å.
        """
        vec = positions.index_select(0, self.edge_src) - positions.index_select(
            0, self.edge_dst
        )
        edge_cell = cell.index_select(0, self.batch.index_select(0, self.edge_dst))
        return vec + torch.einsum("ei,eij->ej", self.edge_shift, edge_cell)


def build_batch(structures: Sequence[Structure], cutoff: float) -> GraphBatch:
    """Pack structures into one graph with neighbour lists at ``cutoff`` (Å).

    Inputs are copied, never modified.
    """
    species, positions, cells, pbcs, batch = [], [], [], [], []
    srcs, dsts, shifts, counts = [], [], [], []
    offset = 0
    for k, s in enumerate(structures):
        i, j, shift, _ = neighbour_pairs(s, cutoff)
        n = s.n_atoms
        species.append(np.asarray(s.numbers, dtype=np.int64))
        positions.append(np.asarray(s.positions, dtype=np.float64))
        cells.append(np.asarray(s.cell, dtype=np.float64))
        pbcs.append(np.asarray(s.pbc, dtype=bool))
        batch.append(np.full(n, k, dtype=np.int64))
        dsts.append(i + offset)
        srcs.append(j + offset)
        shifts.append(shift)
        counts.append(n)
        offset += n
    return GraphBatch(
        species=torch.from_numpy(np.concatenate(species)),
        positions=torch.from_numpy(np.concatenate(positions)),
        cell=torch.from_numpy(np.stack(cells)),
        pbc=torch.from_numpy(np.stack(pbcs)),
        batch=torch.from_numpy(np.concatenate(batch)),
        edge_src=torch.from_numpy(np.concatenate(srcs)),
        edge_dst=torch.from_numpy(np.concatenate(dsts)),
        edge_shift=torch.from_numpy(np.concatenate(shifts).reshape(-1, 3)),
        n_atoms=torch.tensor(counts, dtype=torch.int64),
    )
