"""One Ray Serve replica: a loaded model behind an atom-budget batcher.

:class:`ModelReplica` is a plain class (tests can build it without Ray);
:func:`services.deployments.app.build_app` wraps it as a Serve deployment. The
constructor loads the model, sets torch's threads, sizes the batch budget (a memory
probe on GPU) and warms the model up, so Serve marks the replica ready only after
warm-up. Calls:

- ``predict(ReplicaRequest) -> list[ItemResult]`` in request order;
- ``predict_stream(ReplicaRequest)`` yields ``(position, ItemResult)`` as batches
  finish (a Serve streaming method);
- ``info() -> ReplicaInfo`` what the gateway needs to validate and list.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.structure import Limits, Structure
from services.config import ReplicaOptions
from services.deployments.batching import AtomBudgetBatcher, ItemResult

logger = logging.getLogger(__name__)

# Atom budget of a CPU batch when none is configured: large enough to amortise the
# per-call overhead, small enough that a batch takes well under a second.
CPU_BATCH_ATOMS = 1024
# Share of free GPU memory the probed budget may use.
GPU_MEMORY_FRACTION = 0.5
# Atoms in the structure used to probe GPU memory per atom.
PROBE_ATOMS_PER_SIDE = 4
MIN_PROBED_BUDGET = 64
MAX_PROBED_BUDGET = 1_000_000


@dataclass(frozen=True)
class ReplicaRequest:
    """Work sent from the gateway to a replica.

    Attributes:
        structures: validated structures.
        compute_stress: whether stresses are wanted.
        deadline: absolute ``time.time()`` after which results are useless, or
            ``None``.
    """

    structures: list[Structure]
    compute_stress: bool
    deadline: float | None = None


@dataclass(frozen=True)
class ReplicaInfo:
    """What a replica serves and how.

    Attributes:
        model: model name.
        backend: the backend as the model library names it.
        version: the weights' version.
        exact: whether the backend reproduces the model to round-off.
        spec: the model library's ``ModelSpec`` (cutoff, elements, backends).
        limits: per-structure bounds the replica applies.
        device: ``cpu`` or ``cuda``.
        torch_threads: torch's intra-op threads.
        batch_max_atoms: the batch atom budget in use.
    """

    model: str
    backend: str
    version: str
    exact: bool
    spec: Any
    limits: Limits
    device: str
    torch_threads: int
    batch_max_atoms: int


def load_function(path: str) -> Callable[..., Any]:
    """Import ``module:function``.

    Raises:
        ValueError: when ``path`` is not ``module:function`` or does not resolve.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        raise ValueError(f"model loader {path!r} is not 'module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model loader {path!r} cannot be imported: {err}") from err


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelReplica:
    """A model with its batcher; the body of a Serve deployment.

    Args:
        model: model name.
        backend: backend name.
        options: threads, device, dtype and batching settings.
        max_atoms_per_structure: the per-structure atom limit.
    """

    def __init__(
        self,
        model: str,
        backend: str,
        options: ReplicaOptions,
        max_atoms_per_structure: int = 10_000,
    ) -> None:
        import torch

        torch.set_num_threads(options.torch_threads)
        # batches run in this one thread; OpenMP's thread count is per thread
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="model",
            initializer=torch.set_num_threads,
            initargs=(options.torch_threads,),
        )
        self.device = resolve_device(options.device)
        load = load_function(options.model_loader)
        self.model = load(
            model,
            backend=backend,
            device=self.device,
            dtype=options.dtype,
            limits=Limits(max_atoms=max_atoms_per_structure),
        )
        self._executor.submit(self._warm_up).result()
        budget = options.batch_max_atoms or self._default_budget()
        if hasattr(self.model, "batch_atoms"):  # the library must not re-chunk
            self.model.batch_atoms = max(budget, max_atoms_per_structure)
        self.batcher = AtomBudgetBatcher(
            self._run_batch,
            max_atoms=budget,
            max_edges=options.batch_max_edges,
            max_wait_s=options.batch_max_wait_s,
            max_queued_atoms=options.max_queued_atoms,
            cutoff=float(self.model.spec.cutoff),
            memory_probe=self._peak_gpu_memory if self.device == "cuda" else None,
            executor=self._executor,
        )
        spec = self.model.spec
        self._info = ReplicaInfo(
            model=spec.name,
            backend=str(self.model.backend),
            version=str(spec.version),
            exact=bool(self.model.exact),
            spec=spec,
            limits=self.model.limits,
            device=self.device,
            torch_threads=torch.get_num_threads(),
            batch_max_atoms=budget,
        )
        logger.info("replica ready: %s", self._info)

    def info(self) -> ReplicaInfo:
        """What this replica serves (model, backend, limits, budget)."""
        return self._info

    async def predict(self, request: ReplicaRequest) -> list[ItemResult]:
        """Evaluate every structure; results in request order.

        Raises:
            QueueFullError: the replica's queue is full.
            DeadlineExpiredError: the deadline passed before a structure ran.
        """
        futures = self.batcher.submit(
            request.structures, request.compute_stress, request.deadline
        )
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # no-op when done; frees queued work otherwise

    async def predict_stream(
        self, request: ReplicaRequest
    ) -> AsyncIterator[tuple[int, ItemResult]]:
        """Yield ``(position in request, result)`` as each batch finishes."""
        futures = self.batcher.submit(
            request.structures, request.compute_stress, request.deadline
        )
        position = {future: i for i, future in enumerate(futures)}
        pending: set[asyncio.Future[ItemResult]] = set(futures)
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, return_when=asyncio.FIRST_COMPLETED
                )
                for future in sorted(done, key=position.__getitem__):
                    yield position[future], future.result()
        finally:
            for future in pending:
                future.cancel()

    async def check_health(self) -> None:
        """Serve's health check: fail once the packer task has died."""
        if not self.batcher.healthy():
            raise RuntimeError("the batch packer task died; see the replica log")

    def _run_batch(self, structures: list[Structure], stress: bool) -> list[Any]:
        return list(self.model.predict(structures, compute_stress=stress))

    def _warm_up(self) -> None:
        """Two evaluations of a small periodic cell, with stress."""
        z = min(self.model.spec.elements) if self.model.spec.elements else 14
        cell = np.eye(3) * 4.0
        warm = Structure(
            numbers=np.array([z, z]),
            positions=np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]),
            cell=cell,
            pbc=np.ones(3, dtype=bool),
            label="warm-up",
        )
        started = time.monotonic()
        for _ in range(2):
            self.model.predict([warm], compute_stress=True)
        logger.info("warm-up took %.2f s", time.monotonic() - started)

    def _default_budget(self) -> int:
        if self.device != "cuda":
            return CPU_BATCH_ATOMS
        return self._executor.submit(self._probe_gpu_budget).result()

    def _probe_gpu_budget(self) -> int:
        """Atoms per batch that fit in a share of free GPU memory.

        Evaluates a simple-cubic cell of ``PROBE_ATOMS_PER_SIDE**3`` atoms at 2.5 Å
        spacing and scales its peak memory per atom to the free memory.

        TODO: the probe's neighbour density (~6-30 within 5 Å) may be lower than a
        dense real batch's; the OOM split in the batcher covers the difference. An
        edge budget probed the same way would be tighter.
        """
        import torch

        n = PROBE_ATOMS_PER_SIDE
        grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)
        z = min(self.model.spec.elements) if self.model.spec.elements else 14
        probe = Structure(
            numbers=np.full(n**3, z),
            positions=grid.reshape(-1, 3) * 2.5,
            cell=np.eye(3) * 2.5 * n,
            pbc=np.ones(3, dtype=bool),
        )
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.model.predict([probe], compute_stress=True)
        torch.cuda.synchronize()
        per_atom = max(1, (torch.cuda.max_memory_allocated() - base) // n**3)
        free, _total = torch.cuda.mem_get_info()
        budget = int(GPU_MEMORY_FRACTION * free / per_atom)
        budget = min(MAX_PROBED_BUDGET, max(MIN_PROBED_BUDGET, budget))
        logger.info(
            "GPU probe: %d bytes per atom, %d bytes free -> %d atoms per batch",
            per_atom, free, budget,
        )  # fmt: skip
        return budget

    @staticmethod
    def _peak_gpu_memory() -> int | None:
        import torch

        peak = int(torch.cuda.max_memory_allocated())
        torch.cuda.reset_peak_memory_stats()
        return peak
