"""The replica's atom-budget batcher, without Ray: packing, waiting, bounds,
deadlines, cancellation, out-of-memory splitting and batch figures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from models.structure import InvalidStructureError, Structure
from services.deployments.batching import (
    AtomBudgetBatcher,
    DeadlineExpiredError,
    QueueFullError,
    estimate_edges,
)


def _structure(n_atoms: int, label: str = "") -> Structure:
    return Structure(
        numbers=np.full(n_atoms, 14),
        positions=np.arange(3 * n_atoms, dtype=float).reshape(n_atoms, 3) * 3.0,
        cell=np.eye(3) * 100.0,
        pbc=np.ones(3, dtype=bool),
        label=label,
    )


class Recorder:
    """A batch function recording the atoms of every batch; energy = n_atoms."""

    def __init__(self, oom_above: int | None = None, error: Exception | None = None):
        self.batches: list[list[int]] = []
        self.oom_above = oom_above
        self.error = error

    def __call__(self, structures: list[Structure], stress: bool) -> list[Any]:
        sizes = [s.n_atoms for s in structures]
        if self.error is not None:
            raise self.error
        if self.oom_above is not None and sum(sizes) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(sizes)
        return [float(n) for n in sizes]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_batches_never_exceed_the_atom_budget_and_keep_order():
    recorder = Recorder()

    async def main() -> list[Any]:
        batcher = AtomBudgetBatcher(recorder, max_atoms=20, max_wait_s=0.01)
        sizes = [8, 8, 8, 3, 12, 5, 9]
        futures = batcher.submit([_structure(n) for n in sizes], False)
        results = await asyncio.gather(*futures)
        await batcher.close()
        return [r.value for r in results]

    assert _run(main()) == [8.0, 8.0, 8.0, 3.0, 12.0, 5.0, 9.0]
    assert all(sum(b) <= 20 for b in recorder.batches)
    assert [n for b in recorder.batches for n in b] == [8, 8, 8, 3, 12, 5, 9]


def test_a_structure_larger_than_the_budget_runs_alone():
    recorder = Recorder()

    async def main() -> None:
        batcher = AtomBudgetBatcher(recorder, max_atoms=10, max_wait_s=0.001)
        await asyncio.gather(*batcher.submit([_structure(4), _structure(30)], False))
        await batcher.close()

    _run(main())
    assert recorder.batches == [[4], [30]]


def test_requests_arriving_within_the_wait_share_a_batch():
    recorder = Recorder()

    async def main() -> None:
        batcher = AtomBudgetBatcher(recorder, max_atoms=1000, max_wait_s=0.2)
        first = batcher.submit([_structure(5)], False)
        await asyncio.sleep(0.01)
        second = batcher.submit([_structure(6)], False)
        await asyncio.gather(*first, *second)
        await batcher.close()

    _run(main())
    assert recorder.batches == [[5, 6]]


def test_a_full_budget_does_not_wait_for_the_timer():
    async def main() -> float:
        batcher = AtomBudgetBatcher(Recorder(), max_atoms=10, max_wait_s=5.0)
        started = time.monotonic()
        await asyncio.gather(*batcher.submit([_structure(10)], False))
        await batcher.close()
        return time.monotonic() - started

    assert _run(main()) < 2.0


def test_the_queue_is_bounded_in_atoms():
    async def main() -> None:
        batcher = AtomBudgetBatcher(
            Recorder(), max_atoms=10, max_wait_s=1.0, max_queued_atoms=50
        )
        batcher.submit([_structure(40)], False)
        with pytest.raises(QueueFullError, match="exceed its bound of 50"):
            batcher.submit([_structure(20)], False)
        await batcher.close()

    _run(main())


def test_expired_structures_never_reach_the_model():
    recorder = Recorder()

    async def main() -> None:
        batcher = AtomBudgetBatcher(recorder, max_atoms=100, max_wait_s=0.05)
        (future,) = batcher.submit([_structure(5)], False, deadline=time.time())
        with pytest.raises(DeadlineExpiredError):
            await future
        await batcher.close()

    _run(main())
    assert recorder.batches == []


def test_cancelled_structures_are_dropped():
    recorder = Recorder()

    async def main() -> None:
        batcher = AtomBudgetBatcher(recorder, max_atoms=100, max_wait_s=0.05)
        gone, kept = batcher.submit([_structure(5), _structure(6)], False)
        gone.cancel()
        await kept
        await batcher.close()

    _run(main())
    assert recorder.batches == [[6]]


def test_out_of_memory_splits_the_batch_and_isolates_what_never_fits():
    recorder = Recorder(oom_above=12)

    async def main() -> list[Any]:
        batcher = AtomBudgetBatcher(recorder, max_atoms=100, max_wait_s=0.01)
        sizes = [5, 5, 5, 5, 20]
        futures = batcher.submit([_structure(n, f"s{n}") for n in sizes], False)
        values = [r.value for r in await asyncio.gather(*futures)]
        await batcher.close()
        return values

    values = _run(main())
    assert values[:4] == [5.0] * 4
    assert isinstance(values[4], InvalidStructureError)
    assert values[4].reason == "compute_failed" and "out of memory" in str(values[4])
    assert all(sum(b) <= 12 for b in recorder.batches)


def test_a_model_error_reaches_every_caller_of_the_batch():
    async def main() -> None:
        batcher = AtomBudgetBatcher(
            Recorder(error=ValueError("bug")), max_atoms=100, max_wait_s=0.01
        )
        futures = batcher.submit([_structure(3), _structure(4)], False)
        for future in futures:
            with pytest.raises(ValueError, match="bug"):
                await future
        assert batcher.healthy()
        await batcher.close()

    _run(main())


def test_batch_figures_travel_with_exactly_one_structure_per_batch():
    async def main() -> list[Any]:
        batcher = AtomBudgetBatcher(Recorder(), max_atoms=10, max_wait_s=0.01)
        futures = batcher.submit([_structure(n) for n in (4, 4, 4, 4)], False)
        items = await asyncio.gather(*futures)
        await batcher.close()
        return items

    items = _run(main())
    figures = [item.batch for item in items if item.batch is not None]
    assert [(f.n_structures, f.n_atoms) for f in figures] == [(2, 8), (2, 8)]
    assert all(item.queue_wait_s >= 0 for item in items)


def test_edges_are_estimated_from_density_and_cutoff():
    dense = _structure(8)
    dense.cell = np.eye(3) * 5.43  # diamond Si: ~4.7 neighbours within 3 Å
    sparse = _structure(8)
    assert estimate_edges(dense, 5.0) > estimate_edges(sparse, 5.0)
    molecule = _structure(3)
    molecule.pbc = np.zeros(3, dtype=bool)
    assert estimate_edges(molecule, 5.0) == 6


def test_an_edge_budget_also_splits_batches():
    recorder = Recorder()

    async def main() -> None:
        batcher = AtomBudgetBatcher(
            recorder, max_atoms=1000, max_edges=10, max_wait_s=0.01
        )
        molecules = [_structure(3) for _ in range(4)]
        for m in molecules:
            m.pbc = np.zeros(3, dtype=bool)
        await asyncio.gather(*batcher.submit(molecules, False))
        await batcher.close()

    _run(main())
    assert recorder.batches == [[3], [3], [3], [3]]
