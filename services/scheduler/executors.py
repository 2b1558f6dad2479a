"""Executors: what turns one work unit of structures into outcomes.

The scheduler knows only the :class:`Executor` protocol, an async callable from a
:class:`WorkSpec` and a list of structures to one outcome per structure. Any
exception it raises means "the replica failed": the scheduler retries the unit (up
to a limit). A structure the model refuses is not an exception; it is an
:class:`~models.structure.InvalidStructureError` in its place.

Implementations here:

* :class:`LocalExecutor`: the model in this process (tests, laptops).
* :class:`StandInExecutor`: a labelled stand-in model that computes nothing, for
  measuring what the scheduler alone dispatches.
* ``services.scheduler.ray_executor.RayWorkerExecutor``: a pool of Ray actors, one
  model each, with replacement of dead replicas.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.relax import RelaxResult, RelaxSettings, relax
from models.structure import InvalidStructureError, Structure
from services.scheduler.shards import Outcome

logger = logging.getLogger(__name__)

SINGLE_POINT, RELAX = "single_point", "relax"
TASKS = (SINGLE_POINT, RELAX)
# Relaxation parameters a campaign may set; the rest of RelaxSettings stays default.
RELAX_PARAMETERS = ("fmax", "max_steps", "relax_cell", "pressure")


@dataclass(frozen=True)
class WorkSpec:
    """What to compute for a work unit.

    Attributes:
        model: model name (``models.list_models()``).
        backend: tensor-product backend, ``""`` for the model's default.
        task: ``single_point`` or ``relax``.
        relax: relaxation parameters (see :data:`RELAX_PARAMETERS`).
    """

    model: str
    backend: str
    task: str
    relax: dict[str, Any] = field(default_factory=dict)

    def relax_settings(self) -> RelaxSettings:
        """The relaxation settings, with defaults for what is not given."""
        unknown = set(self.relax) - set(RELAX_PARAMETERS)
        if unknown:
            raise ValueError(
                f"unknown relaxation parameter(s) {sorted(unknown)}; "
                f"known: {list(RELAX_PARAMETERS)}"
            )
        return RelaxSettings(**self.relax)


class Executor(Protocol):
    """Computes one work unit; raises only when the replica itself failed."""

    async def __call__(
        self, spec: WorkSpec, structures: list[Structure]
    ) -> list[Outcome | InvalidStructureError]: ...


def compute(
    model: Any, spec: WorkSpec, structures: Sequence[Structure]
) -> list[Outcome | InvalidStructureError]:
    """Run ``spec``'s task with a loaded model (``models.load_model(...)``).

    Args:
        model: anything with the model library's ``predict`` contract.
        spec: the task and its parameters.
        structures: the work unit.

    Returns:
        One outcome or error per structure, in order.
    """
    if spec.task == SINGLE_POINT:
        predictions = model.predict(list(structures), compute_stress=True)
        return [
            p
            if isinstance(p, InvalidStructureError)
            else Outcome(s, float(p.energy), np.asarray(p.forces), p.stress)
            for s, p in zip(structures, predictions)
        ]
    if spec.task == RELAX:
        results = relax(structures, model, spec.relax_settings())
        return [_relaxed(r) for r in results]
    raise ValueError(f"task must be one of {TASKS}, got {spec.task!r}")


def _relaxed(
    result: RelaxResult | InvalidStructureError,
) -> Outcome | InvalidStructureError:
    if isinstance(result, InvalidStructureError):
        return result
    return Outcome(
        result.structure,
        result.energy,
        result.forces,
        result.stress,
        result.steps,
        result.converged,
    )


class LocalExecutor:
    """Runs work units in this process, one at a time, in a worker thread.

    Args:
        loader: ``(model, backend) -> model``; defaults to
            ``models.load_model(model, backend or None)``. Models are cached.
    """

    def __init__(self, loader: Callable[[str, str], Any] | None = None) -> None:
        self._loader = loader or _load_model
        self._models: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _model(self, spec: WorkSpec) -> Any:
        key = (spec.model, spec.backend)
        with self._lock:
            if key not in self._models:
                self._models[key] = self._loader(spec.model, spec.backend)
            return self._models[key]

    def _run(
        self, spec: WorkSpec, structures: list[Structure]
    ) -> list[Outcome | InvalidStructureError]:
        model = self._model(spec)
        # one work unit at a time: torch uses every thread it was given
        with self._lock:
            return compute(model, spec, structures)

    async def __call__(
        self, spec: WorkSpec, structures: list[Structure]
    ) -> list[Outcome | InvalidStructureError]:
        return await asyncio.to_thread(self._run, spec, structures)


def _load_model(model: str, backend: str) -> Any:
    import models

    return models.load_model(model, backend=backend or None)


class StandInExecutor:
    """A labelled stand-in model: energy ``-1 eV`` per atom, zero forces.

    It computes nothing, so a benchmark through it measures the scheduler alone
    (store, Parquet, dispatch). Never used to serve results.
    """

    label = "stand-in model (no computation): energy = -1 eV/atom, forces = 0"

    async def __call__(
        self, spec: WorkSpec, structures: list[Structure]
    ) -> list[Outcome | InvalidStructureError]:
        return [
            Outcome(s, -float(s.n_atoms), np.zeros((s.n_atoms, 3)), np.zeros(6))
            for s in structures
        ]
