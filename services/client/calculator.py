"""An ASE calculator backed by the service, so ASE's optimisers and dynamics can
drive a served model::

    from ase.optimize import BFGS
    from services.client import EquiserveCalculator

    atoms.calc = EquiserveCalculator("127.0.0.1:50051", api_key="...")
    BFGS(atoms).run(fmax=0.05)

Each ``calculate`` is one Predict call with one structure (one round trip, ~1 ms of
gateway overhead plus the model's time).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

from services.client.client import EquiserveClient, StructureFailedError

logger = logging.getLogger(__name__)


class EquiserveCalculator(Calculator):  # type: ignore[misc]
    """ASE calculator calling a served model.

    Args:
        address: ``host:port`` of the gateway (ignored when ``client`` is given).
        api_key: the caller's API key.
        model: served model name.
        backend: backend name; empty for the model's exact default.
        timeout: deadline per call, s.
        client: an existing client to share.
        **kwargs: passed to ``ase.calculators.calculator.Calculator``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        api_key: str | None = None,
        model: str = "sevennet-0",
        backend: str = "",
        timeout: float = 300.0,
        client: EquiserveClient | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client or EquiserveClient(address, api_key, timeout=timeout)
        self.model = model
        self.backend = backend

    def calculate(
        self,
        atoms: Any = None,
        properties: Any = ("energy",),
        system_changes: Any = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if atoms is None:
            raise CalculationFailed("no atoms to calculate; attach the calculator")
        wanted = ["energy", "forces"]
        if "stress" in properties:
            if not np.asarray(atoms.pbc).any():
                raise CalculationFailed(
                    "stress needs a periodic cell; this structure has pbc=False"
                )
            wanted.append("stress")
        (result,) = self.client.predict(
            [atoms], model=self.model, backend=self.backend, properties=wanted
        )
        if isinstance(result, StructureFailedError):
            raise CalculationFailed(f"{result.reason}: {result}")
        self.results["energy"] = result.energy
        self.results["free_energy"] = result.energy
        self.results["forces"] = result.forces
        if result.stress is not None:
            self.results["stress"] = result.stress
