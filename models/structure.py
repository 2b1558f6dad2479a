"""Plain structure records and the checks every entry point applies to them.

A :class:`Structure` is what the model library, the gateway and the scheduler pass
around: arrays only, no ASE object, so that it crosses process boundaries cheaply.
:func:`validate_structure` holds the rules for bad input; the gRPC gateway and the
campaign scheduler call the same function, so a structure is judged the same way
wherever it enters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

# Below this interatomic distance (Å) a structure is refused: no potential is trained
# there and the radial basis is singular at zero.
DEFAULT_MIN_DISTANCE = 0.5
# Default ceiling on atoms per structure; services configure their own.
DEFAULT_MAX_ATOMS = 10_000
# A periodic cell whose volume (Å^3) falls below this is treated as singular.
MIN_CELL_VOLUME = 1e-3
# Coordinates beyond this magnitude (Å) are refused as nonsense input.
MAX_ABS_COORDINATE = 1e6


class InvalidStructureError(ValueError):
    """A structure the model cannot evaluate.

    Attributes:
        reason: a short, stable code (``unknown_element``, ``non_finite``,
            ``singular_cell``, ``atoms_too_close``, ``empty``, ``too_many_atoms``,
            ``bad_shape``, ``compute_failed``), safe to use as a metric label.
        index: position of the structure in its batch or file, if known.
        label: the structure's own id or name, if it has one.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        index: int | None = None,
        label: str | None = None,
    ) -> None:
        self.reason = reason
        self.detail = message
        self.index = index
        self.label = label
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.index is not None:
            where.append(f"structure {self.index}")
        if self.label:
            where.append(f"({self.label})")
        prefix = " ".join(where) or "structure"
        return f"{prefix}: {self.detail}"

    def at(self, index: int | None, label: str | None = None) -> InvalidStructureError:
        """The same error, located at ``index`` (and ``label``) in a batch."""
        return InvalidStructureError(
            self.reason, self.detail, index, label or self.label
        )


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every structure.

    Attributes:
        max_atoms: most atoms allowed in one structure.
        min_distance: smallest allowed interatomic distance, Å (periodic images
            included).
    """

    max_atoms: int = DEFAULT_MAX_ATOMS
    min_distance: float = DEFAULT_MIN_DISTANCE


@dataclass
class Structure:
    """One atomic structure as arrays.

    Attributes:
        numbers: ``(n_atoms,)`` atomic numbers.
        positions: ``(n_atoms, 3)`` Cartesian positions, Å.
        cell: ``(3, 3)`` lattice vectors as rows, Å; zeros along non-periodic axes
            are allowed.
        pbc: ``(3,)`` periodicity of each cell vector.
        label: optional id carried through to results.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    label: str | None = None

    @property
    def n_atoms(self) -> int:
        return int(np.asarray(self.numbers).shape[0])

    @classmethod
    def from_atoms(cls, atoms: Atoms, label: str | None = None) -> Structure:
        """Copy the arrays of an ASE ``Atoms`` (the input is never mutated)."""
        return cls(
            numbers=np.array(atoms.numbers, dtype=np.int64),
            positions=np.array(atoms.positions, dtype=np.float64),
            cell=np.array(atoms.cell.array, dtype=np.float64),
            pbc=np.array(atoms.pbc, dtype=bool),
            label=label,
        )

    def to_atoms(self) -> Atoms:
        """A new ASE ``Atoms`` with these arrays."""
        from ase import Atoms

        return Atoms(
            numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc
        )


def as_structure(item: Structure | Atoms) -> Structure:
    """Accept either a :class:`Structure` or an ASE ``Atoms``."""
    if isinstance(item, Structure):
        return item
    return Structure.from_atoms(item)


def validate_structure(
    structure: Structure,
    elements: frozenset[int] | set[int] | None = None,
    limits: Limits | None = None,
    index: int | None = None,
) -> None:
    """Refuse a structure a model cannot evaluate.

    Args:
        structure: the structure to check.
        elements: atomic numbers the model knows; ``None`` accepts any.
        limits: atom count and distance bounds; defaults to :class:`Limits`.
        index: position in the caller's batch, used in the message.

    Raises:
        InvalidStructureError: with a stable ``reason`` code and a message that
            names the structure and the problem.
    """
    limits = limits or Limits()
    try:
        _check_shapes(structure)
        _check_values(structure, elements, limits)
        _check_distances(structure, limits)
    except InvalidStructureError as err:
        raise err.at(index, structure.label) from None


def _check_shapes(s: Structure) -> None:
    numbers = np.asarray(s.numbers)
    positions = np.asarray(s.positions)
    if numbers.ndim != 1:
        raise InvalidStructureError(
            "bad_shape",
            f"atomic numbers must be a flat list, got shape {numbers.shape}",
        )
    if numbers.shape[0] == 0:
        raise InvalidStructureError("empty", "the structure has no atoms")
    if positions.shape != (numbers.shape[0], 3):
        raise InvalidStructureError(
            "bad_shape",
            f"positions must have shape ({numbers.shape[0]}, 3) for "
            f"{numbers.shape[0]} atoms, got {positions.shape}",
        )
    if np.asarray(s.cell).shape != (3, 3):
        raise InvalidStructureError(
            "bad_shape", f"cell must be 3x3, got shape {np.asarray(s.cell).shape}"
        )
    if np.asarray(s.pbc).shape != (3,):
        raise InvalidStructureError(
            "bad_shape", f"pbc must have 3 entries, got {np.asarray(s.pbc).shape}"
        )


def _check_values(
    s: Structure, elements: frozenset[int] | set[int] | None, limits: Limits
) -> None:
    n = s.n_atoms
    if n > limits.max_atoms:
        raise InvalidStructureError(
            "too_many_atoms",
            f"{n} atoms exceed the limit of {limits.max_atoms} per structure; "
            "split the structure or raise the configured limit",
        )
    positions = np.asarray(s.positions, dtype=np.float64)
    cell = np.asarray(s.cell, dtype=np.float64)
    if not (np.isfinite(positions).all() and np.isfinite(cell).all()):
        raise InvalidStructureError(
            "non_finite", "positions or cell contain NaN or infinite values"
        )
    if np.abs(positions).max() > MAX_ABS_COORDINATE:
        raise InvalidStructureError(
            "non_finite",
            f"a coordinate exceeds {MAX_ABS_COORDINATE:g} Å; check the units",
        )
    numbers = np.asarray(s.numbers)
    if elements is not None:
        unknown = sorted({int(z) for z in numbers} - set(elements))
        if unknown:
            raise InvalidStructureError(
                "unknown_element",
                f"element(s) {_symbols(unknown)} not supported by this model; "
                "ListModels shows each model's elements",
            )
    pbc = np.asarray(s.pbc, dtype=bool)
    if pbc.any():
        periodic = cell[pbc]
        gram = periodic @ periodic.T
        volume = math.sqrt(max(float(np.linalg.det(gram)), 0.0))
        scale = float(np.prod(np.linalg.norm(periodic, axis=1))) or 1.0
        if volume < MIN_CELL_VOLUME ** (pbc.sum() / 3) or volume / scale < 1e-8:
            raise InvalidStructureError(
                "singular_cell",
                "the periodic cell vectors are degenerate (zero volume); "
                "give three independent lattice vectors for periodic axes",
            )


def _check_distances(s: Structure, limits: Limits) -> None:
    if s.n_atoms < 2 and not np.asarray(s.pbc).any():
        return
    from models.graph import neighbour_pairs

    _, _, _, dist = neighbour_pairs(s, limits.min_distance)
    if dist.size:
        k = int(np.argmin(dist))
        raise InvalidStructureError(
            "atoms_too_close",
            f"two atoms are {dist[k]:.3f} Å apart, closer than the "
            f"{limits.min_distance} Å threshold",
        )


def _symbols(numbers: list[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(
        chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
        for z in numbers
    )
