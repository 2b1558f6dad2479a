"""The scheduler in-process: dispatch, retries, restarts, fairness, tenancy, limits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ase.build import bulk
from ase.io import write

from models.structure import InvalidStructureError, Structure
from services.scheduler import store
from services.scheduler.errors import (
    CampaignNotFoundError,
    CampaignStateError,
    InvalidCampaignRequestError,
)
from services.scheduler.executors import StandInExecutor, WorkSpec
from services.scheduler.scheduler import Scheduler, SchedulerConfig
from services.scheduler.shards import Outcome
from tests.services.scheduler.campaign_helpers import open_store, tiny_structures

SPEC = WorkSpec("stand-in", "", "single_point")
# Generous bound on one campaign in these tests, s.
WAIT_S = 30.0


class RecordingExecutor:
    """The stand-in model, recording calls; optionally failing or slow."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.fail_first = fail_first
        self.delay_s = delay_s
        self._inner = StandInExecutor()

    async def __call__(
        self, spec: WorkSpec, structures: list[Structure]
    ) -> list[Outcome | InvalidStructureError]:
        self.calls.append([s.label or "" for s in structures])
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("replica died")
        return await self._inner(spec, structures)


def _config(tmp_path: Path, url: str, **overrides: Any) -> SchedulerConfig:
    base, _, prefix = url.partition("#")
    settings: dict[str, Any] = dict(
        data_dir=tmp_path / "data", store_url=base, table_prefix=prefix or "es_",
        chunk_size=4, max_in_flight=2, retry_delay_s=0.01, poll_interval_s=0.02,
    )  # fmt: skip
    settings.update(overrides)
    return SchedulerConfig(**settings)


async def _wait_done(sched: Scheduler, tenant: str, campaign_id: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        view = await sched.get(tenant, campaign_id)
        if view.record.state not in store.ACTIVE_STATES:
            return view
        await asyncio.sleep(0.02)
    raise TimeoutError(f"campaign {campaign_id} did not finish in {WAIT_S} s")


async def _results(sched: Scheduler, tenant: str, campaign_id: str) -> pa.Table:
    shards = await sched.shards(tenant, campaign_id, 0, limit=10_000)
    tables = [pq.read_table(pa.BufferReader(data)) for _, data in shards]
    return pa.concat_tables(tables)


def _run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 2 * WAIT_S))


def test_a_campaign_completes_with_one_result_per_structure(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        sched = Scheduler(_config(tmp_path, store_url), RecordingExecutor())
        await sched.start()
        record = await sched.submit("alice", "c", SPEC)
        await sched.append("alice", record.id, 0, tiny_structures(10), last=False)
        await sched.append("alice", record.id, 10, tiny_structures(7, 10), last=True)
        view = await _wait_done(sched, "alice", record.id)
        table = await _results(sched, "alice", record.id)
        await sched.stop()

        assert view.record.state == store.COMPLETED
        assert (view.record.total, view.record.succeeded) == (17, 17)
        assert sorted(table.column("index").to_pylist()) == list(range(17))
        assert table.column("id").to_pylist()[0].startswith("s")
        assert view.throughput > 0 and view.eta_seconds == 0

    _run(scenario)


def test_a_failing_replica_is_retried_and_results_stay_exactly_once(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        executor = RecordingExecutor(fail_first=2)
        sched = Scheduler(_config(tmp_path, store_url), executor)
        await sched.start()
        record = await sched.submit("alice", "c", SPEC)
        await sched.append("alice", record.id, 0, tiny_structures(12), last=True)
        view = await _wait_done(sched, "alice", record.id)
        table = await _results(sched, "alice", record.id)
        await sched.stop()

        assert (view.record.succeeded, view.record.failed) == (12, 0)
        assert sorted(table.column("index").to_pylist()) == list(range(12))
        assert len(executor.calls) == 3 + 2

    _run(scenario)


def test_a_unit_that_keeps_failing_records_its_structures_as_failed(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        executor = RecordingExecutor(fail_first=1000)
        sched = Scheduler(_config(tmp_path, store_url, max_attempts=2), executor)
        await sched.start()
        record = await sched.submit("alice", "c", SPEC)
        await sched.append("alice", record.id, 0, tiny_structures(6), last=True)
        view = await _wait_done(sched, "alice", record.id)
        table = await _results(sched, "alice", record.id)
        await sched.stop()

        assert view.record.state == store.COMPLETED
        assert (view.record.succeeded, view.record.failed) == (0, 6)
        assert set(table.column("error_reason").to_pylist()) == {"compute_failed"}
        assert "after 2 attempts" in table.column("error_message").to_pylist()[0]

    _run(scenario)


def test_a_restarted_scheduler_resumes_and_counts_each_structure_once(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        config = _config(tmp_path, store_url, chunk_size=2, max_in_flight=1)
        first = Scheduler(config, RecordingExecutor(delay_s=0.05))
        await first.start()
        record = await first.submit("alice", "c", SPEC)
        await first.append("alice", record.id, 0, tiny_structures(20), last=True)
        while (await first.get("alice", record.id)).record.n_results < 4:
            await asyncio.sleep(0.01)
        await first.stop()  # killed with a unit in flight
        first.store.close()

        second = Scheduler(config, RecordingExecutor(), open_store(store_url))
        await second.start()
        view = await _wait_done(second, "alice", record.id)
        table = await _results(second, "alice", record.id)
        await second.stop()

        assert view.record.succeeded == 20
        assert sorted(table.column("index").to_pylist()) == list(range(20))

    _run(scenario)


def test_tenants_share_fairly_and_priorities_order_a_tenants_campaigns(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        executor = RecordingExecutor(delay_s=0.01)
        sched = Scheduler(_config(tmp_path, store_url, max_in_flight=1), executor)
        big = await sched.submit("alice", "big", SPEC)
        low = await sched.submit("bob", "low", SPEC, priority=0)
        high = await sched.submit("bob", "high", SPEC, priority=5)
        await sched.append("alice", big.id, 0, tiny_structures(40), last=True)
        await sched.append("bob", low.id, 0, tiny_structures(8, 100), last=True)
        await sched.append("bob", high.id, 0, tiny_structures(8, 200), last=True)
        await sched.start()
        for c in (big, low, high):
            await _wait_done(sched, "bob" if c is not big else "alice", c.id)
        await sched.stop()

        owners = ["alice" if int(c[0][1:]) < 100 else "bob" for c in executor.calls]
        # while both tenants have work, units alternate between them
        assert all(a != b for a, b in itertools.pairwise(owners[:8]))
        bob_units = [c[0] for c in executor.calls if int(c[0][1:]) >= 100]
        # within bob, the high-priority campaign (ids s200...) goes first
        assert [int(u[1:]) >= 200 for u in bob_units] == [True, True, False, False]

    _run(scenario)


def test_another_tenant_cannot_see_stream_or_cancel_a_campaign(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        sched = Scheduler(_config(tmp_path, store_url), RecordingExecutor())
        record = await sched.submit("alice", "c", SPEC)
        for call in (
            sched.get("mallory", record.id),
            sched.cancel("mallory", record.id),
            sched.shards("mallory", record.id),
            sched.append("mallory", record.id, 0, tiny_structures(1), last=True),
        ):
            with pytest.raises(CampaignNotFoundError):
                await call
        assert await sched.list_campaigns("mallory") == []
        view = await sched.cancel("alice", record.id)
        assert view.record.state == store.CANCELLED
        with pytest.raises(CampaignStateError, match="cancelled"):
            await sched.append("alice", record.id, 0, tiny_structures(1), last=True)

    _run(scenario)


def test_limits_on_atoms_structures_and_chunks_give_clear_errors(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        config = _config(
            tmp_path, store_url, max_atoms=3, max_structures=5, max_append=4
        )
        sched = Scheduler(config, RecordingExecutor())
        record = await sched.submit("alice", "c", SPEC)
        large = Structure(np.ones(4, dtype=int), np.random.rand(4, 3) * 3)
        with pytest.raises(InvalidCampaignRequestError, match="4 atoms exceed"):
            await sched.append("alice", record.id, 0, [large], last=False)
        with pytest.raises(InvalidCampaignRequestError, match="5 structures in one"):
            await sched.append("alice", record.id, 0, tiny_structures(5), last=False)
        await sched.append("alice", record.id, 0, tiny_structures(4), last=False)
        with pytest.raises(InvalidCampaignRequestError, match="limit of 5 per"):
            await sched.append("alice", record.id, 4, tiny_structures(2), last=True)
        with pytest.raises(InvalidCampaignRequestError, match="task must be"):
            await sched.submit("alice", "c", WorkSpec("m", "", "dance"))
        with pytest.raises(InvalidCampaignRequestError, match="fmax"):
            await sched.submit("alice", "c", WorkSpec("m", "", "relax", {"fmax": -1}))

    _run(scenario)


def test_a_server_side_file_is_read_inside_the_data_root_only(
    tmp_path: Path, store_url: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    frames = [bulk("Si", "diamond", a=5.43 + 0.01 * k) for k in range(9)]
    write(root / "set.extxyz", frames, format="extxyz")
    secret = tmp_path / "secret.extxyz"
    write(secret, frames[:1], format="extxyz")
    (root / "link.extxyz").symlink_to(secret)

    async def scenario() -> None:
        config = _config(tmp_path, store_url, data_roots=(root,), max_append=4)
        sched = Scheduler(config, RecordingExecutor())
        await sched.start()
        for bad in ("../secret.extxyz", str(secret), "link.extxyz"):
            with pytest.raises(InvalidCampaignRequestError, match="data roots"):
                await sched.submit("alice", "c", SPEC, source=(bad, ""))
        record = await sched.submit("alice", "c", SPEC, source=("set.extxyz", ""))
        view = await _wait_done(sched, "alice", record.id)
        await sched.stop()
        assert (view.record.state, view.record.succeeded) == (store.COMPLETED, 9)

    _run(scenario)


def test_an_ase_database_is_read_server_side(tmp_path: Path, store_url: str) -> None:
    from ase.db import connect

    root = tmp_path / "root"
    root.mkdir()
    with connect(root / "set.db") as db:
        for k in range(5):
            db.write(bulk("Cu", "fcc", a=3.6 + 0.01 * k))

    async def scenario() -> None:
        config = _config(tmp_path, store_url, data_roots=(root,))
        sched = Scheduler(config, RecordingExecutor())
        await sched.start()
        record = await sched.submit("alice", "db", SPEC, source=("set.db", ""))
        view = await _wait_done(sched, "alice", record.id)
        table = await _results(sched, "alice", record.id)
        await sched.stop()
        assert (view.record.state, view.record.succeeded) == (store.COMPLETED, 5)
        assert sorted(table.column("id").to_pylist()) == ["1", "2", "3", "4", "5"]

    _run(scenario)


def test_a_lost_input_file_fails_the_campaign_with_the_reason(
    tmp_path: Path, store_url: str
) -> None:
    async def scenario() -> None:
        config = _config(tmp_path, store_url, max_attempts=2)
        sched = Scheduler(config, RecordingExecutor())
        record = await sched.submit("alice", "c", SPEC)
        await sched.append("alice", record.id, 0, tiny_structures(8), last=True)
        next((tmp_path / "data" / record.id / "inputs").iterdir()).unlink()
        await sched.start()
        view = await _wait_done(sched, "alice", record.id)
        await sched.stop()
        assert view.record.state == store.FAILED
        assert "failed for good" in view.record.message

    _run(scenario)
