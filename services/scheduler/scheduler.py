"""The campaign scheduler: durable, chunked dispatch with bounded work in flight.

The :class:`Scheduler` keeps no state that matters in memory: campaigns, work units
and result shards live in the :class:`~services.scheduler.store.Store`, inputs and
results in Parquet files under ``data_dir``. On start it puts every unit that was
in flight back in the queue, so a scheduler killed at any moment resumes where it
stopped; the store records each unit's result once, so nothing is counted twice.

Dispatch: at most ``max_in_flight`` units run at once (backpressure: the scheduler
claims no more until one finishes). The next unit goes to the tenant with the
fewest units in flight (ties: the one served least recently), and within that
tenant to its highest-priority, oldest campaign. A unit whose executor raises is
retried after ``retry_delay_s``, up to ``max_attempts``; then every structure of it
is recorded as failed (``compute_failed``) and the campaign goes on.

It runs in-process (tests, the benchmark) or inside a Ray actor
(:mod:`services.scheduler.actor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.structure import InvalidStructureError, Structure
from services.scheduler import shards, store
from services.scheduler.config import SchedulerConfig
from services.scheduler.errors import (
    CampaignNotFoundError,
    CampaignStateError,
    InvalidCampaignRequestError,
)
from services.scheduler.executors import TASKS, Executor, WorkSpec
from services.scheduler.sources import confine, iter_structures, source_format

logger = logging.getLogger(__name__)

__all__ = ["CampaignView", "Scheduler", "SchedulerConfig"]


@dataclass(frozen=True)
class CampaignView:
    """A campaign with its live figures."""

    record: store.CampaignRecord
    running: int
    throughput: float
    eta_seconds: float


@dataclass
class _Fairness:
    """In-memory dispatch bookkeeping (rebuilt from nothing after a restart)."""

    in_flight: dict[str, int] = field(default_factory=dict)
    last_served: dict[str, float] = field(default_factory=dict)


class Scheduler:
    """Campaigns: accept, dispatch, record, report. See the module docstring.

    Args:
        config: settings.
        executor: computes work units.
        backing_store: an open store; by default one is opened from the config.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        executor: Executor,
        backing_store: store.Store | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.store = backing_store or store.Store(config.url, config.table_prefix)
        self._fair = _Fairness()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._ingests: dict[str, asyncio.Task[None]] = {}

    # life cycle
    async def start(self) -> None:
        """Requeue what was in flight before a restart and begin dispatching."""
        requeued = await asyncio.to_thread(self.store.requeue_claimed)
        if requeued:
            logger.info("requeued %d work unit(s) left in flight", requeued)
        await self._resume_ingests()
        self._loop_task = asyncio.create_task(self._dispatch_loop())

    async def stop(self) -> None:
        """Stop dispatching; units in flight are abandoned (requeued on start)."""
        for task in [self._loop_task, *self._tasks, *self._ingests.values()]:
            if task is not None:
                task.cancel()
        for task in [self._loop_task, *self._tasks, *self._ingests.values()]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = None

    # the API the servicer calls
    async def submit(
        self,
        tenant: str,
        name: str,
        spec: WorkSpec,
        priority: int = 0,
        source: tuple[str, str] | None = None,
    ) -> store.CampaignRecord:
        """Create a campaign; with ``source`` (path, format) it is read server-side."""
        if spec.task not in TASKS:
            raise InvalidCampaignRequestError(
                f"task must be one of {list(TASKS)}, got {spec.task!r}"
            )
        try:
            spec.relax_settings()
        except (TypeError, ValueError) as err:
            raise InvalidCampaignRequestError(f"relaxation parameters: {err}") from None
        params: dict[str, Any] = {"relax": spec.relax}
        if source is not None:
            path = confine(source[0], self.config.data_roots)
            params["source"] = [str(path), source_format(path, source[1])]
        now = time.time()
        record = store.CampaignRecord(
            id=uuid.uuid4().hex, tenant=tenant, name=name, model=spec.model,
            backend=spec.backend, task=spec.task, params=params, priority=priority,
            state=store.OPEN, total=0, succeeded=0, failed=0, n_tasks=0, n_shards=0,
            created=now, updated=now, message="",
        )  # fmt: skip
        await asyncio.to_thread(self.store.create_campaign, record)
        logger.info(
            "campaign %s submitted by %s: %s/%s %s",
            record.id, tenant, spec.model, spec.backend, spec.task,
        )  # fmt: skip
        if source is not None:
            self._start_ingest(record)
        return record

    async def append(
        self,
        tenant: str,
        campaign_id: str,
        first_index: int,
        structures: Sequence[Structure],
        last: bool,
    ) -> int:
        """Store a chunk of structures as work units; returns the campaign's total."""
        record = await self._owned(tenant, campaign_id)
        if "source" in record.params:
            raise CampaignStateError(
                f"campaign {campaign_id} reads its structures from a server file; "
                "it takes no appends"
            )
        self._check_chunk(record, first_index, structures)
        return await self._store_chunk(record, first_index, list(structures), last)

    async def get(self, tenant: str, campaign_id: str) -> CampaignView:
        """The campaign with live figures (structures running, throughput, ETA)."""
        return await asyncio.to_thread(
            self._view, await self._owned(tenant, campaign_id)
        )

    async def list_campaigns(self, tenant: str, limit: int = 100) -> list[CampaignView]:
        """The tenant's campaigns, newest first."""
        records = await asyncio.to_thread(self.store.list_campaigns, tenant, limit)
        return [await asyncio.to_thread(self._view, r) for r in records]

    async def cancel(self, tenant: str, campaign_id: str) -> CampaignView:
        """Stop dispatching a campaign; results already written stay."""
        await self._owned(tenant, campaign_id)
        await asyncio.to_thread(
            self.store.set_state, campaign_id, store.CANCELLED, "", store.ACTIVE_STATES
        )
        if campaign_id in self._ingests:
            self._ingests.pop(campaign_id).cancel()
        return await self.get(tenant, campaign_id)

    async def shards(
        self, tenant: str, campaign_id: str, from_seq: int = 0, limit: int = 16
    ) -> list[tuple[store.ShardRecord, bytes]]:
        """Up to ``limit`` result shards (Parquet bytes) in completion order."""
        await self._owned(tenant, campaign_id)
        records = await asyncio.to_thread(
            self.store.shards, campaign_id, from_seq, limit
        )
        return [(r, await asyncio.to_thread(Path(r.path).read_bytes)) for r in records]

    async def shard_at_offset(self, tenant: str, campaign_id: str, offset: int) -> int:
        """The sequence number of the shard holding stream offset ``offset``."""
        await self._owned(tenant, campaign_id)
        return await asyncio.to_thread(self.store.shard_at_offset, campaign_id, offset)

    def totals(self) -> list[tuple[str, int, int, int, int]]:
        """Per state: campaigns, structures pending, succeeded, failed (blocking)."""
        return self.store.totals()

    # helpers of the API
    async def _owned(self, tenant: str, campaign_id: str) -> store.CampaignRecord:
        record = await asyncio.to_thread(self.store.get_campaign, campaign_id)
        if record is None or record.tenant != tenant:
            raise CampaignNotFoundError.for_id(campaign_id)
        return record

    def _view(self, record: store.CampaignRecord) -> CampaignView:
        running = self.store.in_flight(record.id)
        rate = self.store.throughput(record.id)
        left = record.total - record.n_results
        eta = left / rate if rate > 0 and record.state in store.ACTIVE_STATES else -1.0
        return CampaignView(record, running, rate, 0.0 if left == 0 else eta)

    def _check_chunk(
        self, record: store.CampaignRecord, first_index: int, chunk: Sequence[Structure]
    ) -> None:
        cfg = self.config
        if len(chunk) > cfg.max_append:
            raise InvalidCampaignRequestError(
                f"{len(chunk)} structures in one append exceed the limit of "
                f"{cfg.max_append}; send smaller chunks"
            )
        if first_index + len(chunk) > cfg.max_structures:
            raise InvalidCampaignRequestError(
                f"campaign {record.id} would hold {first_index + len(chunk)} "
                f"structures, over the limit of {cfg.max_structures} per campaign; "
                "split it into several campaigns"
            )
        for k, s in enumerate(chunk):
            problem = _shape_problem(s, cfg.max_atoms)
            if problem:
                raise InvalidCampaignRequestError(
                    f"structure {first_index + k} ({s.label or 'no id'}): {problem}"
                )

    async def _store_chunk(
        self,
        record: store.CampaignRecord,
        first_index: int,
        structures: list[Structure],
        last: bool,
    ) -> int:
        size = self.config.chunk_size
        units: list[tuple[int, str]] = []
        for start in range(0, len(structures), size):
            part = structures[start : start + size]
            path = self._path(record.id, "inputs", first_index + start)
            await asyncio.to_thread(
                shards.write_inputs, path, first_index + start, part
            )
            units.append((len(part), str(path)))
        try:
            total = await asyncio.to_thread(
                self.store.add_tasks, record.id, first_index, units, last
            )
        except store.StoreError as err:
            raise CampaignStateError(str(err)) from None
        self._wake.set()
        return total

    def _path(self, campaign_id: str, kind: str, number: int) -> Path:
        return (
            Path(self.config.data_dir) / campaign_id / kind / f"{number:012d}.parquet"
        )

    # server-side sources
    def _start_ingest(self, record: store.CampaignRecord) -> None:
        task = asyncio.create_task(self._ingest(record))
        self._ingests[record.id] = task
        task.add_done_callback(lambda _: self._ingests.pop(record.id, None))

    async def _resume_ingests(self) -> None:
        for record in await asyncio.to_thread(self.store.open_campaigns):
            if "source" not in record.params:
                continue
            logger.info("resuming ingest of campaign %s at %d", record.id, record.total)
            self._start_ingest(record)

    async def _ingest(self, record: store.CampaignRecord) -> None:
        path, fmt = record.params["source"]
        index = record.total
        try:
            reader = iter_structures(Path(path), fmt, skip=index)
            while True:
                chunk = await asyncio.to_thread(_take, reader, self.config.max_append)
                last = len(chunk) < self.config.max_append
                self._check_chunk(record, index, chunk)
                index = await self._store_chunk(record, index, chunk, last)
                if last:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            logger.exception("campaign %s: reading %s failed", record.id, path)
            await asyncio.to_thread(
                self.store.set_state, record.id, store.FAILED,
                f"reading the source file failed: {err}", store.ACTIVE_STATES,
            )  # fmt: skip

    # dispatch
    async def _dispatch_loop(self) -> None:
        while True:
            try:
                await self._fill()
            except Exception:
                logger.exception("dispatch failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval_s)

    async def _fill(self) -> None:
        """Claim work units until ``max_in_flight`` run or none is ready."""
        while len(self._tasks) < self.config.max_in_flight:
            candidates = await asyncio.to_thread(self.store.runnable_campaigns)
            if not candidates:
                return
            claimed = False
            for record in self._by_fairness(candidates):
                task = await asyncio.to_thread(self.store.claim_task, record.id)
                if task is not None:
                    self._launch(record, task)
                    claimed = True
                    break
            if not claimed:
                return

    def _by_fairness(
        self, candidates: list[store.CampaignRecord]
    ) -> list[store.CampaignRecord]:
        fair = self._fair
        return sorted(
            candidates,
            key=lambda r: (
                fair.in_flight.get(r.tenant, 0),
                fair.last_served.get(r.tenant, 0.0),
                -r.priority,
                r.created,
            ),
        )

    def _launch(self, record: store.CampaignRecord, task: store.TaskRecord) -> None:
        fair = self._fair
        fair.in_flight[record.tenant] = fair.in_flight.get(record.tenant, 0) + 1
        fair.last_served[record.tenant] = time.monotonic()
        job = asyncio.create_task(self._run_unit(record, task))
        self._tasks.add(job)

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.discard(job)
            fair.in_flight[record.tenant] -= 1
            self._wake.set()

        job.add_done_callback(done)

    async def _run_unit(
        self, record: store.CampaignRecord, task: store.TaskRecord
    ) -> None:
        """Compute one unit and record it; a failure retries or fails the unit."""
        spec = WorkSpec(record.model, record.backend, record.task,
                        dict(record.params.get("relax") or {}))  # fmt: skip
        try:
            indices, inputs = await asyncio.to_thread(
                shards.read_inputs, Path(task.input_path)
            )
        except Exception as err:
            await self._unit_failed(task, err, fatal=True)
            return
        try:
            outcomes = await asyncio.wait_for(
                self.executor(spec, inputs), self.config.unit_timeout_s
            )
            if len(outcomes) != len(inputs):
                raise RuntimeError(
                    f"executor returned {len(outcomes)} outcomes for {len(inputs)}"
                )
        except Exception as err:
            if await self._unit_failed(task, err):
                return
            reason = f"failed after {task.attempts} attempts: {err}"
            outcomes = [InvalidStructureError("compute_failed", reason)] * len(inputs)
        try:
            await asyncio.to_thread(self._record, task, indices, inputs, outcomes)
        except Exception as err:  # the store or the disk: try the unit again later
            await self._unit_failed(task, err, fatal=True)

    async def _unit_failed(
        self, task: store.TaskRecord, err: Exception, fatal: bool = False
    ) -> bool:
        """Retry the unit if attempts are left (returns True); else give up.

        Giving up on a computation (``fatal`` False) lets the caller record every
        structure as failed. Giving up on the unit itself (its input unreadable,
        its result unwritable: ``fatal``) fails the campaign with the reason.
        """
        if task.attempts < self.config.max_attempts:
            logger.warning(
                "campaign %s unit %d failed (attempt %d of %d): %s",
                task.campaign, task.task_no, task.attempts,
                self.config.max_attempts, err,
            )  # fmt: skip
            await asyncio.to_thread(
                self.store.release_task, task, self.config.retry_delay_s, repr(err)
            )
            return True
        logger.error("campaign %s unit %d failed for good: %s",
                     task.campaign, task.task_no, err)  # fmt: skip
        if fatal:
            message = f"work unit {task.task_no} failed for good: {err}"
            await asyncio.to_thread(
                self.store.set_state, task.campaign, store.FAILED, message,
                store.ACTIVE_STATES,
            )  # fmt: skip
        return False

    def _record(
        self,
        task: store.TaskRecord,
        indices: list[int],
        inputs: list[Structure],
        outcomes: Sequence[Any],
    ) -> None:
        located = [
            o.at(i, s.label) if isinstance(o, InvalidStructureError) else o
            for i, s, o in zip(indices, inputs, outcomes)
        ]
        path = self._path(task.campaign, "results", task.first_index)
        succeeded, failed = shards.write_results(path, indices, inputs, located)
        if not self.store.complete_task(task, str(path), succeeded, failed):
            logger.info(
                "unit %d of %s was already recorded", task.task_no, task.campaign
            )


def _take(iterator: Any, n: int) -> list[Structure]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == n:
            break
    return out


def _shape_problem(s: Structure, max_atoms: int) -> str:
    """What is wrong with a structure's shape or size, or ``""``."""
    n = int(np.asarray(s.numbers).reshape(-1).shape[0])
    if n > max_atoms:
        return (
            f"{n} atoms exceed the limit of {max_atoms} per structure; split it "
            "or ask the operator for a larger limit"
        )
    if np.asarray(s.positions).shape != (n, 3):
        return f"positions must hold 3 numbers per atom for {n} atoms"
    if np.asarray(s.cell).shape != (3, 3) or np.asarray(s.pbc).shape != (3,):
        return "cell must hold 9 numbers and pbc 3 (or both be empty)"
    return ""
