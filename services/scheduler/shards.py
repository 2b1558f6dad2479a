"""Parquet files for a campaign's inputs and results, written atomically.

Every work unit owns one input file and one result file, both named after the
unit, so a unit that runs twice overwrites its own result file with the same rows
(the store records it once). Files are written to a temporary name and renamed,
so a reader never sees half a file.

Flat columns: positions, cell and forces are ``list<double>`` with 3 numbers per
atom (row-major), stress is ``list<double>`` of 6 (Voigt, eV/Å^3) or empty.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.structure import InvalidStructureError, Structure

logger = logging.getLogger(__name__)

INPUT_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("numbers", pa.list_(pa.int32())),
        ("positions", pa.list_(pa.float64())),
        ("cell", pa.list_(pa.float64())),
        ("pbc", pa.list_(pa.bool_())),
    ]
)

RESULT_SCHEMA = pa.schema(
    [
        *INPUT_SCHEMA,
        ("energy", pa.float64()),
        ("forces", pa.list_(pa.float64())),
        ("stress", pa.list_(pa.float64())),
        ("steps", pa.int32()),
        ("converged", pa.bool_()),
        ("error_reason", pa.string()),
        ("error_message", pa.string()),
    ]
)


@dataclass
class Outcome:
    """What the model made of one structure (single point or relaxation).

    Attributes:
        structure: the final structure (the input for a single point).
        energy: eV; forces: ``(n_atoms, 3)`` eV/Å; stress: ``(6,)`` eV/Å^3 or None.
        steps, converged: relaxation only (0 and True for a single point).
    """

    structure: Structure
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    steps: int = 0
    converged: bool = True


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _structure_columns(structures: Sequence[Structure]) -> dict[str, list[Any]]:
    return {
        "id": [s.label or "" for s in structures],
        "numbers": [np.asarray(s.numbers, dtype=np.int32) for s in structures],
        "positions": [
            np.asarray(s.positions, dtype=np.float64).ravel() for s in structures
        ],
        "cell": [np.asarray(s.cell, dtype=np.float64).ravel() for s in structures],
        "pbc": [np.asarray(s.pbc, dtype=bool) for s in structures],
    }


def write_inputs(path: Path, first_index: int, structures: Sequence[Structure]) -> None:
    """Store ``structures`` (indices from ``first_index``) as one input file."""
    columns = _structure_columns(structures)
    columns["index"] = list(range(first_index, first_index + len(structures)))
    _atomic_write(pa.table(columns, schema=INPUT_SCHEMA), path)


def read_inputs(path: Path) -> tuple[list[int], list[Structure]]:
    """Indices and structures of one input file."""
    table = pq.read_table(path)
    return table.column("index").to_pylist(), structures_from_table(table)


def structures_from_table(table: pa.Table) -> list[Structure]:
    """Rebuild structures from the structure columns of an input or result table."""
    numbers = table.column("numbers").to_pylist()
    positions = table.column("positions").to_pylist()
    cells = table.column("cell").to_pylist()
    pbcs = table.column("pbc").to_pylist()
    ids = table.column("id").to_pylist()
    return [
        Structure(
            numbers=np.asarray(z, dtype=np.int64),
            positions=np.asarray(r, dtype=np.float64).reshape(-1, 3),
            cell=np.asarray(c, dtype=np.float64).reshape(3, 3),
            pbc=np.asarray(p, dtype=bool),
            label=label or None,
        )
        for z, r, c, p, label in zip(numbers, positions, cells, pbcs, ids)
    ]


def write_results(
    path: Path,
    indices: Sequence[int],
    inputs: Sequence[Structure],
    outcomes: Sequence[Outcome | InvalidStructureError],
) -> tuple[int, int]:
    """Store one work unit's results; returns ``(succeeded, failed)``.

    A failed structure keeps its input structure and its error; its numeric
    columns are NaN or empty.
    """
    if not (len(indices) == len(inputs) == len(outcomes)):
        raise ValueError(
            f"{len(indices)} indices, {len(inputs)} inputs and {len(outcomes)} "
            "outcomes: a work unit needs one outcome per structure"
        )
    final = [
        o.structure if isinstance(o, Outcome) else s for s, o in zip(inputs, outcomes)
    ]
    columns = _structure_columns(final)
    columns["id"] = [s.label or "" for s in inputs]
    columns["index"] = list(indices)
    ok = [o if isinstance(o, Outcome) else None for o in outcomes]
    columns["energy"] = [o.energy if o else float("nan") for o in ok]
    columns["forces"] = [np.asarray(o.forces).ravel() if o else [] for o in ok]
    columns["stress"] = [
        np.asarray(o.stress).ravel() if o and o.stress is not None else [] for o in ok
    ]
    columns["steps"] = [o.steps if o else 0 for o in ok]
    columns["converged"] = [o.converged if o else False for o in ok]
    columns["error_reason"] = [
        "" if o else getattr(e, "reason", "compute_failed")
        for o, e in zip(ok, outcomes)
    ]
    columns["error_message"] = ["" if o else str(e) for o, e in zip(ok, outcomes)]
    _atomic_write(pa.table(columns, schema=RESULT_SCHEMA), path)
    succeeded = sum(1 for o in ok if o is not None)
    return succeeded, len(ok) - succeeded


def read_results(path: Path) -> pa.Table:
    """One result file as a table with :data:`RESULT_SCHEMA`."""
    return pq.read_table(path, schema=RESULT_SCHEMA)
