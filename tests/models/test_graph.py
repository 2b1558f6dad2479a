"""Neighbour lists and batched graphs against ASE's own neighbour list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from models.graph import build_batch, neighbour_pairs
from models.structure import Structure
from tests.models.structures import parity_set

CUTOFF = 5.0


def _sorted_pairs(i: np.ndarray, j: np.ndarray, d: np.ndarray) -> np.ndarray:
    rows = np.stack([i, j, np.round(d, 8)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name", sorted(parity_set()))
def test_pairs_match_ase_including_many_images(name: str) -> None:
    atoms = parity_set()[name]
    i, j, _, d = neighbour_pairs(Structure.from_atoms(atoms), CUTOFF)
    ai, aj, ad = neighbor_list("ijd", atoms, CUTOFF)
    np.testing.assert_allclose(
        _sorted_pairs(i, j, d), _sorted_pairs(ai, aj, ad), atol=1e-7
    )


def test_one_atom_cell_shorter_than_cutoff_sees_its_images() -> None:
    atoms = Atoms("Li", positions=[[0, 0, 0]], cell=np.eye(3) * 2.0, pbc=True)
    i, _, shifts, d = neighbour_pairs(Structure.from_atoms(atoms), CUTOFF)
    assert len(i) == len(neighbor_list("i", atoms, CUTOFF)) == 80
    assert np.all(np.abs(shifts).max(axis=1) >= 1)
    assert d.max() < CUTOFF


def test_edge_vectors_reproduce_distances_in_a_mixed_batch() -> None:
    frames = list(parity_set().values())
    graph = build_batch([Structure.from_atoms(a) for a in frames], CUTOFF)
    vectors = graph.edge_vectors(graph.positions, graph.cell)
    lengths = torch.linalg.norm(vectors, dim=1)
    assert float(lengths.max()) < CUTOFF
    assert graph.n_systems == len(frames)
    assert int(graph.n_atoms.sum()) == sum(len(a) for a in frames)
    same_system = graph.batch[graph.edge_src] == graph.batch[graph.edge_dst]
    assert bool(same_system.all())
