"""equiserve's model library: equivariant potentials, graphs and tensor-product
backends. Plain PyTorch; runs without Ray or gRPC.

Public surface::

    load_model(name, backend=..., device=..., dtype=...) -> Potential
    Potential.predict(structures) -> list[Prediction | InvalidStructureError]
    list_models(), get_spec(name)
"""

from models.potential import Potential, Prediction, load_model
from models.registry import (
    BackendInfo,
    ModelSpec,
    UnknownBackendError,
    UnknownModelError,
    get_spec,
    list_models,
)
from models.structure import InvalidStructureError, Limits, Structure

__all__ = [
    "BackendInfo",
    "InvalidStructureError",
    "Limits",
    "ModelSpec",
    "Potential",
    "Prediction",
    "Structure",
    "UnknownBackendError",
    "UnknownModelError",
    "get_spec",
    "list_models",
    "load_model",
]
