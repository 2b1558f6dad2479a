"""The records the campaign store holds, and the states they move through."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# Campaign states as stored; the gRPC enum mirrors them.
OPEN, RUNNING, COMPLETED, CANCELLED, FAILED = (
    "open",
    "running",
    "completed",
    "cancelled",
    "failed",
)
ACTIVE_STATES = (OPEN, RUNNING)
# Task states.
PENDING, CLAIMED, DONE = "pending", "running", "done"
# Window over which throughput is measured, s.
THROUGHPUT_WINDOW_S = 60.0


class StoreError(RuntimeError):
    """The store refused an operation (bad id, wrong state, gap in appends)."""


@dataclass(frozen=True)
class CampaignRecord:
    """One campaign row.

    Attributes:
        params: task parameters (relaxation settings), decoded from JSON.
        total: structures stored; n_results: results written (succeeded + failed).
    """

    id: str
    tenant: str
    name: str
    model: str
    backend: str
    task: str
    params: dict[str, Any]
    priority: int
    state: str
    total: int
    succeeded: int
    failed: int
    n_tasks: int
    n_shards: int
    created: float
    updated: float
    message: str

    @property
    def n_results(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class TaskRecord:
    """One work unit: structures ``first_index .. first_index + count - 1``."""

    campaign: str
    task_no: int
    first_index: int
    count: int
    attempts: int
    input_path: str


@dataclass(frozen=True)
class ShardRecord:
    """One result shard: ``count`` results, stream offsets from ``first_offset``."""

    campaign: str
    seq: int
    task_no: int
    first_offset: int
    count: int
    path: str
