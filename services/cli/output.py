"""Writing campaign results to extxyz, Parquet or CSV, and summarising them."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".parquet": "parquet", ".csv": "csv"}
CSV_COLUMNS = (
    "index", "id", "formula", "n_atoms", "energy", "energy_per_atom", "fmax",
    "steps", "converged", "error_reason", "error_message",
)  # fmt: skip


def output_format(path: Path) -> str:
    """The format implied by the file's extension."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the output format of {path.name!r}; end it with one of "
            f"{sorted(FORMATS)}"
        )
    return fmt


def write_results(table: pa.Table, path: Path) -> int:
    """Write ``table`` (result columns) to ``path``; returns rows written."""
    fmt = output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        _write_csv(table.to_pylist(), path)
    else:
        _write_extxyz(table.to_pylist(), path)
    return int(table.num_rows)


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per result: formula, energy per atom, largest force."""
    from ase.formula import Formula

    out = []
    for row in rows:
        numbers = row["numbers"]
        forces = np.asarray(row["forces"], dtype=float).reshape(-1, 3)
        ok = not row["error_reason"]
        out.append(
            {
                "index": row["index"],
                "id": row["id"],
                "formula": Formula.from_list(_symbols(numbers)).format("hill"),
                "n_atoms": len(numbers),
                "energy": row["energy"] if ok else None,
                "energy_per_atom": row["energy"] / len(numbers) if ok else None,
                "fmax": float(np.linalg.norm(forces, axis=1).max()) if ok else None,
                "steps": row["steps"],
                "converged": row["converged"] if ok else None,
                "error_reason": row["error_reason"],
                "error_message": row["error_message"],
            }
        )
    return out


def _symbols(numbers: list[int]) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in numbers]


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(summary_rows(rows))


def _write_extxyz(rows: list[dict[str, Any]], path: Path) -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for row in rows:
        n = len(row["numbers"])
        atoms = Atoms(
            numbers=row["numbers"],
            positions=np.asarray(row["positions"]).reshape(n, 3),
            cell=np.asarray(row["cell"]).reshape(3, 3),
            pbc=row["pbc"],
        )
        atoms.info.update(
            campaign_index=row["index"], id=row["id"], steps=row["steps"],
            converged=row["converged"],
        )  # fmt: skip
        if row["error_reason"]:
            atoms.info["error"] = row["error_reason"]
        else:
            results: dict[str, Any] = {
                "energy": row["energy"],
                "forces": np.asarray(row["forces"]).reshape(n, 3),
            }
            if row["stress"]:
                results["stress"] = np.asarray(row["stress"])
            atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    write(path, frames, format="extxyz")
