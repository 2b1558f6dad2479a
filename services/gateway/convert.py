"""Conversions between protobuf messages and the model library's records."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from equiserve.v1 import structure_pb2

from models.structure import InvalidStructureError, Structure
from services.gateway.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_KNOWN_PROPERTIES = {
    structure_pb2.PROPERTY_ENERGY,
    structure_pb2.PROPERTY_FORCES,
    structure_pb2.PROPERTY_STRESS,
}


@dataclass(frozen=True)
class Wanted:
    """Properties a caller asked for (energy always comes back)."""

    forces: bool
    stress: bool


def wanted_properties(properties: Any) -> Wanted:
    """Read ``PredictRequest.properties``; empty means energy and forces.

    Raises:
        InvalidRequestError: for a value outside the ``Property`` enum.
    """
    asked = {int(p) for p in properties} - {structure_pb2.PROPERTY_UNSPECIFIED}
    unknown = asked - _KNOWN_PROPERTIES
    if unknown:
        raise InvalidRequestError(
            f"unknown property value(s) {sorted(unknown)}; use PROPERTY_ENERGY, "
            "PROPERTY_FORCES or PROPERTY_STRESS"
        )
    if not asked:
        return Wanted(forces=True, stress=False)
    return Wanted(
        forces=structure_pb2.PROPERTY_FORCES in asked,
        stress=structure_pb2.PROPERTY_STRESS in asked,
    )


def structure_from_proto(msg: structure_pb2.Structure, index: int) -> Structure:
    """A :class:`Structure` from its message; shapes checked, values not yet.

    Raises:
        InvalidStructureError: ``bad_shape`` naming the field and its length.
    """
    label = msg.id or None
    n = len(msg.atomic_numbers)
    checks = (
        ("positions", len(msg.positions), (3 * n,)),
        ("cell", len(msg.cell), (0, 9)),
        ("pbc", len(msg.pbc), (0, 3)),
    )
    for name, got, allowed in checks:
        if got not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise InvalidStructureError(
                "bad_shape",
                f"{name} has {got} numbers, expected {want} (for {n} atoms)",
                index,
                label,
            )
    cell = np.array(msg.cell, dtype=np.float64).reshape(3, 3) if msg.cell else None
    return Structure(
        numbers=np.array(msg.atomic_numbers, dtype=np.int64),
        positions=np.array(msg.positions, dtype=np.float64).reshape(n, 3),
        cell=cell if cell is not None else np.zeros((3, 3)),
        pbc=np.array(msg.pbc, dtype=bool) if msg.pbc else np.zeros(3, dtype=bool),
        label=label,
    )


def structure_to_proto(structure: Structure) -> structure_pb2.Structure:
    """The message for a :class:`Structure` (used by the client)."""
    return structure_pb2.Structure(
        atomic_numbers=np.asarray(structure.numbers).tolist(),
        positions=np.asarray(structure.positions, dtype=np.float64).ravel().tolist(),
        cell=np.asarray(structure.cell, dtype=np.float64).ravel().tolist(),
        pbc=np.asarray(structure.pbc, dtype=bool).tolist(),
        id=structure.label or "",
    )


def result_to_proto(
    index: int, label: str, value: Any, wanted: Wanted
) -> structure_pb2.StructureResult:
    """A ``StructureResult`` from a ``Prediction`` or a per-structure error."""
    result = structure_pb2.StructureResult(index=index, id=label)
    if isinstance(value, InvalidStructureError):
        result.error.reason = value.reason
        result.error.message = str(value.at(index, label or None))
        return result
    result.energy = float(value.energy)
    if wanted.forces:
        result.forces.extend(np.asarray(value.forces, dtype=np.float64).ravel())
    if wanted.stress and value.stress is not None:
        result.stress.extend(np.asarray(value.stress, dtype=np.float64).ravel())
    return result
