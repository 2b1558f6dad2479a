"""Size-aware dynamic batching inside a replica.

Serve's ``@serve.batch`` batches by request count; a 2-atom molecule and a 500-atom
cell cost very different amounts, so a replica packs its own batches by atoms (and
optionally estimated edges) with an asyncio queue and one packer task:

- a structure waits at most ``max_wait_s`` for its batch to fill;
- a batch takes structures in arrival order while they fit the atom and edge
  budgets; a structure larger than the budget runs alone (never refused here: the
  gateway already bounds atoms per structure);
- the queue is bounded in atoms (:class:`QueueFullError` beyond it);
- structures whose deadline passed, or whose caller gave up, are dropped before
  they reach the model;
- one batch runs at a time, in a worker thread, so the replica keeps accepting
  work while the model computes; the next batch fills meanwhile.
- an out-of-memory error splits the batch in halves and retries; a single structure
  that still does not fit gets a ``compute_failed`` error; the replica lives on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.structure import InvalidStructureError, Structure
from services.metrics import BatchFigures

logger = logging.getLogger(__name__)

# A structure without a periodic cell: assume this many neighbours per atom at most
# (a dense molecule within a 5 Å cutoff) when estimating edges.
MOLECULE_NEIGHBOURS_CAP = 64

# Runs one batch: (structures, compute_stress) -> one result per structure, in order.
BatchFn = Callable[[list[Structure], bool], list[Any]]


class QueueFullError(RuntimeError):
    """The replica's queue holds its configured atom budget; retry later."""


class DeadlineExpiredError(TimeoutError):
    """A structure's deadline passed before its batch started."""


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one structure, with the figures the gateway records.

    Attributes:
        value: the model's result (``models.Prediction``) or an
            ``InvalidStructureError`` for this structure alone.
        queue_wait_s: time from submission to the start of its batch, s.
        batch: the batch's figures, set on exactly one structure per batch so that
            the gateway records each batch once.
    """

    value: Any
    queue_wait_s: float
    batch: BatchFigures | None


@dataclass
class _Item:
    structure: Structure
    compute_stress: bool
    deadline: float | None
    atoms: int
    edges: int
    enqueued: float
    future: asyncio.Future[ItemResult]


def estimate_edges(structure: Structure, cutoff: float) -> int:
    """Estimate directed edges within ``cutoff`` from the density of atoms.

    Args:
        structure: the structure; its cell volume gives the density when periodic.
        cutoff: neighbour cutoff, Å.

    Returns:
        ``n_atoms * neighbours``, neighbours = density * (4/3) pi cutoff^3, capped by
        ``n_atoms - 1`` without periodicity and by :data:`MOLECULE_NEIGHBOURS_CAP`
        when no volume is known.
    """
    n = structure.n_atoms
    pbc = np.asarray(structure.pbc, dtype=bool)
    if pbc.all():
        volume = abs(float(np.linalg.det(np.asarray(structure.cell, dtype=float))))
        density = n / max(volume, 1e-9)
        neighbours = density * 4.0 / 3.0 * math.pi * cutoff**3
        return max(1, math.ceil(n * neighbours))
    return max(1, n * min(n - 1, MOLECULE_NEIGHBOURS_CAP))


class AtomBudgetBatcher:
    """Packs submitted structures into batches bounded by atoms and edges.

    Args:
        run_batch: computes one batch (called in a worker thread).
        max_atoms: atom budget of one batch.
        max_edges: edge budget of one batch; 0 for none.
        max_wait_s: longest time the oldest queued structure waits for company, s.
        max_queued_atoms: atoms the queue may hold before submissions are refused.
        cutoff: neighbour cutoff used to estimate edges, Å.
        is_oom: tells an out-of-memory error from any other.
        memory_probe: returns peak device memory since the last call, bytes (GPU),
            or ``None``.
        executor: where batches run; default asyncio's thread pool. A replica
            passes a one-thread executor whose thread set torch's thread count
            (OpenMP settings are per calling thread).
    """

    def __init__(
        self,
        run_batch: BatchFn,
        max_atoms: int,
        max_edges: int = 0,
        max_wait_s: float = 0.002,
        max_queued_atoms: int = 200_000,
        cutoff: float = 5.0,
        is_oom: Callable[[BaseException], bool] | None = None,
        memory_probe: Callable[[], int | None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        if max_atoms <= 0:
            raise ValueError(f"max_atoms must be positive, got {max_atoms}")
        self._run_batch = run_batch
        self.max_atoms = max_atoms
        self.max_edges = max_edges
        self.max_wait_s = max_wait_s
        self.max_queued_atoms = max_queued_atoms
        self.cutoff = cutoff
        self._is_oom = is_oom or _is_oom
        self._memory_probe = memory_probe or (lambda: None)
        self._executor = executor
        self._pending: deque[_Item] = deque()
        self._queued_atoms = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._batch_ids = itertools.count()

    @property
    def queued_atoms(self) -> int:
        return self._queued_atoms

    def healthy(self) -> bool:
        """False once the packer task has died (it never should)."""
        return self._task is None or not self._task.done()

    def submit(
        self,
        structures: Sequence[Structure],
        compute_stress: bool,
        deadline: float | None = None,
    ) -> list[asyncio.Future[ItemResult]]:
        """Queue structures; each gets a future resolved when its batch is done.

        Args:
            structures: structures already validated by the caller.
            compute_stress: whether stresses are wanted.
            deadline: absolute ``time.time()`` after which results are useless.

        Raises:
            QueueFullError: when the queue would exceed ``max_queued_atoms``.
        """
        self._ensure_started()
        atoms = sum(s.n_atoms for s in structures)
        if self._queued_atoms and self._queued_atoms + atoms > self.max_queued_atoms:
            raise QueueFullError(
                f"replica queue holds {self._queued_atoms} atoms; {atoms} more would "
                f"exceed its bound of {self.max_queued_atoms}; retry with backoff"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for s in structures:
            edges = estimate_edges(s, self.cutoff)
            item = _Item(
                s, compute_stress, deadline, s.n_atoms, edges, now, loop.create_future()
            )
            self._pending.append(item)
            futures.append(item.future)
        self._queued_atoms += atoms
        assert self._wakeup is not None  # set by _ensure_started
        self._wakeup.set()
        return futures

    async def close(self) -> None:
        """Stop the packer task; queued structures fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._pending:
            item.future.cancel()
        self._pending.clear()

    def _ensure_started(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._pack_forever())

    async def _pack_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[_Item]:
        wakeup = self._wakeup
        assert wakeup is not None
        while not self._pending:
            wakeup.clear()
            await wakeup.wait()

        # wait for the budget to fill, at most max_wait after the oldest arrival
        close_at = self._pending[0].enqueued + self.max_wait_s
        while self._queued_atoms < self.max_atoms and time.monotonic() < close_at:
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), close_at - time.monotonic())
            except TimeoutError:
                break

        # take structures in order while they fit; the first one always goes
        batch: list[_Item] = []
        atoms = edges = 0
        while self._pending:
            item = self._pending[0]
            fits = (atoms + item.atoms <= self.max_atoms) and (
                not self.max_edges or edges + item.edges <= self.max_edges
            )
            if batch and not fits:
                break
            self._pending.popleft()
            self._queued_atoms -= item.atoms
            if self._drop_if_stale(item):
                continue
            batch.append(item)
            atoms += item.atoms
            edges += item.edges
        return batch

    def _drop_if_stale(self, item: _Item) -> bool:
        if item.future.done():  # the caller gave up (cancelled)
            return True
        if item.deadline is not None and time.time() > item.deadline:
            item.future.set_exception(
                DeadlineExpiredError("the deadline passed while the structure queued")
            )
            return True
        return False

    async def _run(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        structures = [item.structure for item in batch]
        stress = any(item.compute_stress for item in batch)
        try:
            values = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._split_on_oom, structures, stress
            )
        except Exception as err:  # a model bug: every caller of this batch sees it
            logger.exception("batch of %d structures failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        compute_s = time.monotonic() - started
        figures = BatchFigures(
            batch_id=str(next(self._batch_ids)),
            n_structures=len(batch),
            n_atoms=sum(item.atoms for item in batch),
            compute_s=compute_s,
            gpu_memory_bytes=self._memory_probe(),
        )
        for i, (item, value) in enumerate(zip(batch, values)):
            if not item.future.done():
                item.future.set_result(
                    ItemResult(
                        value, started - item.enqueued, figures if i == 0 else None
                    )
                )

    def _split_on_oom(self, structures: list[Structure], stress: bool) -> list[Any]:
        try:
            return list(self._run_batch(structures, stress))
        except Exception as err:
            if not self._is_oom(err):
                raise
        _release_device_memory()
        if len(structures) == 1:
            n = structures[0].n_atoms
            logger.warning("one structure of %d atoms does not fit in memory", n)
            return [
                InvalidStructureError(
                    "compute_failed",
                    f"out of memory evaluating {n} atoms alone; split the structure "
                    "or use a replica with more memory",
                    label=structures[0].label,
                )
            ]
        half = len(structures) // 2
        logger.warning("out of memory on %d structures; splitting", len(structures))
        return self._split_on_oom(structures[:half], stress) + self._split_on_oom(
            structures[half:], stress
        )


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _release_device_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
