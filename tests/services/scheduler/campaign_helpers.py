"""Helpers shared by the scheduler tests (imported as a plain module)."""

from __future__ import annotations

import numpy as np

from models.structure import Structure
from services.scheduler.store import Store


def open_store(url: str) -> Store:
    """Open the store a ``store_url`` fixture value names."""
    base, _, prefix = url.partition("#")
    return Store(base, prefix or "es_")


def tiny_structures(n: int, start: int = 0) -> list[Structure]:
    """``n`` two-atom periodic structures with distinct ids."""
    out = []
    for k in range(start, start + n):
        out.append(
            Structure(
                numbers=np.array([14, 14]),
                positions=np.array([[0.0, 0.0, 0.0], [1.3, 1.3, 1.3 + 1e-4 * k]]),
                cell=np.eye(3) * 5.43,
                pbc=np.ones(3, dtype=bool),
                label=f"s{k}",
            )
        )
    return out
