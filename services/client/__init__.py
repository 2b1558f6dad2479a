"""Python client of the equiserve gRPC API and an ASE calculator backed by it.

Light on purpose: it needs grpcio, numpy and (for the calculator) ASE, not torch.
"""

from services.client.calculator import EquiserveCalculator
from services.client.client import EquiserveClient, Result, StructureFailedError

__all__ = ["EquiserveCalculator", "EquiserveClient", "Result", "StructureFailedError"]
