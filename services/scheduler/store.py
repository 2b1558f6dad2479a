"""The campaign store: campaigns, work units and result shards in SQL.

One code path for both databases: SQLite (a file, the embedded default) and
PostgreSQL (several nodes). Every statement is written once with ``?`` placeholders;
the only dialect difference the shim handles is the placeholder style. Both support
``INSERT ... ON CONFLICT DO NOTHING`` and ``UPDATE ... RETURNING``, on which the
exactly-once guarantee rests:

* a work unit ("task") covers a fixed range of structure indices of one campaign;
* its results are one Parquet shard, recorded by :meth:`Store.complete_task` in
  one transaction that inserts the shard row keyed by ``(campaign, task_no)``,
  bumps the campaign's counters and marks the task done. A second completion of
  the same task (a retry that raced a slow replica, a scheduler restarted between
  writing the file and committing) finds the row and changes nothing.

Tables carry a prefix so that tests (and several deployments) share one database.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.scheduler.records import (
    ACTIVE_STATES,
    CANCELLED,
    CLAIMED,
    COMPLETED,
    DONE,
    FAILED,
    OPEN,
    PENDING,
    RUNNING,
    THROUGHPUT_WINDOW_S,
    CampaignRecord,
    ShardRecord,
    StoreError,
    TaskRecord,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVE_STATES", "CANCELLED", "COMPLETED", "FAILED", "OPEN", "RUNNING",
    "CampaignRecord", "ShardRecord", "Store", "StoreError", "TaskRecord",
]  # fmt: skip

_CAMPAIGN_COLUMNS = (
    "id, tenant, name, model, backend, task, params, priority, state, total, "
    "succeeded, failed, n_tasks, n_shards, created, updated, message"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {p}campaigns (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,
    model TEXT NOT NULL, backend TEXT NOT NULL, task TEXT NOT NULL,
    params TEXT NOT NULL, priority INTEGER NOT NULL, state TEXT NOT NULL,
    total BIGINT NOT NULL, succeeded BIGINT NOT NULL, failed BIGINT NOT NULL,
    n_tasks BIGINT NOT NULL, n_shards BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,
    message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {p}tasks (
    campaign TEXT NOT NULL, task_no BIGINT NOT NULL, first_index BIGINT NOT NULL,
    count BIGINT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    input_path TEXT NOT NULL, not_before DOUBLE PRECISION NOT NULL,
    error TEXT NOT NULL, PRIMARY KEY (campaign, task_no));
CREATE INDEX IF NOT EXISTS {p}tasks_pending ON {p}tasks (campaign, state, task_no);
CREATE TABLE IF NOT EXISTS {p}shards (
    campaign TEXT NOT NULL, seq BIGINT NOT NULL, task_no BIGINT NOT NULL,
    first_offset BIGINT NOT NULL, count BIGINT NOT NULL, path TEXT NOT NULL,
    finished DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (campaign, task_no), UNIQUE (campaign, seq));
CREATE INDEX IF NOT EXISTS {p}shards_finished ON {p}shards (campaign, finished);
"""


class Store:
    """Campaign state in SQLite or PostgreSQL; thread-safe, one connection.

    Args:
        url: ``sqlite:///path/to/file.sqlite`` (``sqlite://:memory:`` for tests)
            or ``postgresql://user@host:port/db``.
        prefix: table name prefix (letters, digits, underscore).
    """

    def __init__(self, url: str, prefix: str = "es_") -> None:
        if not prefix.replace("_", "").isalnum():
            raise ValueError(
                f"table prefix must be letters, digits and underscores, got {prefix!r}"
            )
        self.url = url
        self.prefix = prefix
        self._lock = threading.RLock()
        self._postgres = url.startswith(("postgresql://", "postgres://"))
        self._conn: Any = self._connect(url)
        with self._tx() as cur:
            for statement in _SCHEMA.format(p=prefix).split(";"):
                if statement.strip():
                    cur.execute(statement)

    @staticmethod
    def _sqlite_path(url: str) -> str:
        path = url.removeprefix("sqlite://").removeprefix("/") if url else ""
        if path in ("", ":memory:"):
            return ":memory:"
        return "/" + path if url.startswith("sqlite:////") else path

    def _connect(self, url: str) -> Any:
        if self._postgres:
            import psycopg

            return psycopg.connect(url, autocommit=False)
        if not url.startswith("sqlite://"):
            raise ValueError(
                f"store url must start with sqlite:// or postgresql://, got {url!r}"
            )
        path = self._sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def drop_tables(self) -> None:
        """Remove this prefix's tables (tests clean up with it)."""
        with self._tx() as cur:
            for table in ("shards", "tasks", "campaigns"):
                cur.execute(f"DROP TABLE IF EXISTS {self.prefix}{table}")

    # the dialect shim: one placeholder style in, the driver's style out
    def _sql(self, statement: str) -> str:
        statement = statement.replace("{p}", self.prefix)
        return statement.replace("?", "%s") if self._postgres else statement

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A cursor inside one transaction, committed or rolled back as a whole."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                if not self._postgres:
                    cur.execute("BEGIN IMMEDIATE")
                yield _Cursor(cur, self._sql)
                self._conn.commit() if self._postgres else cur.execute("COMMIT")
            except BaseException:
                self._conn.rollback() if self._postgres else cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    # campaigns
    def create_campaign(self, record: CampaignRecord) -> None:
        """Insert a new campaign."""
        with self._tx() as cur:
            cur.execute(
                f"INSERT INTO {{p}}campaigns ({_CAMPAIGN_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id, record.tenant, record.name, record.model,
                    record.backend, record.task, json.dumps(record.params),
                    record.priority, record.state, record.total, record.succeeded,
                    record.failed, record.n_tasks, record.n_shards, record.created,
                    record.updated, record.message,
                ),
            )  # fmt: skip

    def get_campaign(self, campaign_id: str) -> CampaignRecord | None:
        """The campaign, or ``None`` if there is none with that id."""
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {{p}}campaigns WHERE id = ?",
                (campaign_id,),
            )
            row = cur.fetchone()
        return None if row is None else _campaign(row)

    def list_campaigns(self, tenant: str, limit: int = 100) -> list[CampaignRecord]:
        """The tenant's campaigns, newest first."""
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {{p}}campaigns WHERE tenant = ? "
                "ORDER BY created DESC LIMIT ?",
                (tenant, limit),
            )
            return [_campaign(row) for row in cur.fetchall()]

    def set_state(
        self,
        campaign_id: str,
        state: str,
        message: str = "",
        only_from: Sequence[str] = (),
    ) -> bool:
        """Move a campaign to ``state`` (only from ``only_from`` states if given)."""
        guard = ""
        args: list[Any] = [state, message, time.time(), campaign_id]
        if only_from:
            guard = " AND state IN (" + ", ".join("?" for _ in only_from) + ")"
            args.extend(only_from)
        with self._tx() as cur:
            cur.execute(
                "UPDATE {p}campaigns SET state = ?, message = ?, updated = ? "
                "WHERE id = ?" + guard,
                tuple(args),
            )
            changed = cur.rowcount > 0
            self._maybe_complete(cur, campaign_id)
        return bool(changed)

    def add_tasks(
        self,
        campaign_id: str,
        first_index: int,
        tasks: Sequence[tuple[int, str]],
        seal: bool,
    ) -> int:
        """Record appended structures as tasks; idempotent per ``first_index``.

        Args:
            campaign_id: an OPEN campaign.
            first_index: index of the first appended structure; must equal the
                campaign's current total (a retried append, whose structures are
                already stored, is acknowledged without change).
            tasks: ``(count, input_path)`` per new task, in index order.
            seal: no more appends after this one.

        Returns:
            The campaign's total after the append.

        Raises:
            StoreError: unknown campaign, not OPEN, or a gap in the indices.
        """
        added = sum(count for count, _ in tasks)
        with self._tx() as cur:
            cur.execute(
                "SELECT state, total, n_tasks FROM {p}campaigns WHERE id = ?",
                (campaign_id,),
            )
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"no campaign {campaign_id!r}")
            state, total, n_tasks = row
            if first_index + added <= total and not (
                first_index == total and state == OPEN
            ):
                # a retried append: its structures are already stored
                if seal and state == OPEN and first_index + added == total:
                    cur.execute(
                        "UPDATE {p}campaigns SET state = ? WHERE id = ?",
                        (RUNNING, campaign_id),
                    )
                    self._maybe_complete(cur, campaign_id)
                return int(total)
            if state != OPEN:
                raise StoreError(
                    f"campaign {campaign_id} is {state}, not open; appends are "
                    "accepted only until one is sent with `last` set"
                )
            if first_index != total:
                raise StoreError(
                    f"append starts at structure {first_index} but campaign "
                    f"{campaign_id} holds {total}; resend from {total}"
                )
            index = first_index
            for k, (count, path) in enumerate(tasks):
                cur.execute(
                    "INSERT INTO {p}tasks (campaign, task_no, first_index, count, "
                    "state, attempts, input_path, not_before, error) "
                    "VALUES (?, ?, ?, ?, ?, 0, ?, 0, '')",
                    (campaign_id, n_tasks + k, index, count, PENDING, path),
                )
                index += count
            cur.execute(
                "UPDATE {p}campaigns SET total = ?, n_tasks = ?, state = ?, "
                "updated = ? WHERE id = ?",
                (
                    index, n_tasks + len(tasks), RUNNING if seal else OPEN,
                    time.time(), campaign_id,
                ),
            )  # fmt: skip
            self._maybe_complete(cur, campaign_id)
        return index

    def open_campaigns(self) -> list[CampaignRecord]:
        """Every campaign still accepting structures."""
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {{p}}campaigns WHERE state = ?",
                (OPEN,),
            )
            return [_campaign(row) for row in cur.fetchall()]

    # tasks
    def runnable_campaigns(self, now: float | None = None) -> list[CampaignRecord]:
        """Active campaigns with at least one task ready to claim."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM {{p}}campaigns c WHERE state IN "
                "(?, ?) AND EXISTS (SELECT 1 FROM {p}tasks t WHERE t.campaign = c.id "
                "AND t.state = ? AND t.not_before <= ?)",
                (OPEN, RUNNING, PENDING, now),
            )
            return [_campaign(row) for row in cur.fetchall()]

    def claim_task(
        self, campaign_id: str, now: float | None = None
    ) -> TaskRecord | None:
        """Take the campaign's lowest pending task; ``None`` if none is ready."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.execute(
                "UPDATE {p}tasks SET state = ?, attempts = attempts + 1 "
                "WHERE campaign = ? AND state = ? AND task_no = (SELECT MIN(task_no) "
                "FROM {p}tasks WHERE campaign = ? AND state = ? AND not_before <= ?) "
                "RETURNING campaign, task_no, first_index, count, attempts, input_path",
                (CLAIMED, campaign_id, PENDING, campaign_id, PENDING, now),
            )
            row = cur.fetchone()
        return None if row is None else TaskRecord(*row)

    def release_task(self, task: TaskRecord, delay_s: float, error: str) -> None:
        """Put a claimed task back (its replica failed), ready after ``delay_s``."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE {p}tasks SET state = ?, not_before = ?, error = ? "
                "WHERE campaign = ? AND task_no = ? AND state = ?",
                (PENDING, time.time() + delay_s, error[:2000], task.campaign,
                 task.task_no, CLAIMED),
            )  # fmt: skip

    def requeue_claimed(self) -> int:
        """After a restart: every task left claimed goes back to pending."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE {p}tasks SET state = ? WHERE state = ?", (PENDING, CLAIMED)
            )
            return int(cur.rowcount)

    def complete_task(
        self, task: TaskRecord, path: str, succeeded: int, failed: int
    ) -> bool:
        """Record a task's result shard exactly once.

        Returns:
            ``True`` if this call recorded it; ``False`` if it was already recorded
            (then nothing changes).
        """
        now = time.time()
        with self._tx() as cur:
            cur.execute(
                "SELECT 1 FROM {p}shards WHERE campaign = ? AND task_no = ?",
                (task.campaign, task.task_no),
            )
            if cur.fetchone() is not None:
                return False
            cur.execute(
                "UPDATE {p}campaigns SET n_shards = n_shards + 1, "
                "succeeded = succeeded + ?, failed = failed + ?, updated = ? "
                "WHERE id = ? RETURNING n_shards, succeeded + failed",
                (succeeded, failed, now, task.campaign),
            )
            n_shards, n_results = cur.fetchone()
            cur.execute(
                "INSERT INTO {p}shards (campaign, seq, task_no, first_offset, count, "
                "path, finished) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task.campaign, n_shards - 1, task.task_no, n_results - task.count,
                 task.count, path, now),
            )  # fmt: skip
            cur.execute(
                "UPDATE {p}tasks SET state = ?, error = '' WHERE campaign = ? "
                "AND task_no = ?",
                (DONE, task.campaign, task.task_no),
            )
            self._maybe_complete(cur, task.campaign)
        return True

    def _maybe_complete(self, cur: _Cursor, campaign_id: str) -> None:
        cur.execute(
            "UPDATE {p}campaigns SET state = ? WHERE id = ? AND state = ? "
            "AND succeeded + failed = total",
            (COMPLETED, campaign_id, RUNNING),
        )

    # progress and results
    def in_flight(self, campaign_id: str) -> int:
        """Structures in claimed tasks right now."""
        with self._tx() as cur:
            cur.execute(
                "SELECT COALESCE(SUM(count), 0) FROM {p}tasks WHERE campaign = ? "
                "AND state = ?",
                (campaign_id, CLAIMED),
            )
            return int(cur.fetchone()[0])

    def throughput(self, campaign_id: str, now: float | None = None) -> float:
        """Results per second over the last :data:`THROUGHPUT_WINDOW_S`."""
        now = time.time() if now is None else now
        with self._tx() as cur:
            cur.execute(
                "SELECT COALESCE(SUM(count), 0), MIN(finished) FROM {p}shards "
                "WHERE campaign = ? AND finished >= ?",
                (campaign_id, now - THROUGHPUT_WINDOW_S),
            )
            count, first = cur.fetchone()
            cur.execute(
                "SELECT MIN(finished) FROM {p}shards WHERE campaign = ?",
                (campaign_id,),
            )
            (started,) = cur.fetchone()
        if not count or started is None:
            return 0.0
        # the window starts at the earlier of its edge and the first shard
        span = now - max(now - THROUGHPUT_WINDOW_S, min(float(first), float(started)))
        return float(count) / max(span, 1e-3)

    def shards(
        self, campaign_id: str, from_seq: int = 0, limit: int = 1_000_000
    ) -> list[ShardRecord]:
        """Up to ``limit`` result shards in completion order, from ``from_seq``."""
        with self._tx() as cur:
            cur.execute(
                "SELECT campaign, seq, task_no, first_offset, count, path "
                "FROM {p}shards WHERE campaign = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (campaign_id, from_seq, limit),
            )
            return [ShardRecord(*row) for row in cur.fetchall()]

    def totals(self) -> list[tuple[str, int, int, int, int]]:
        """Per state: campaigns, structures not yet done, succeeded, failed."""
        with self._tx() as cur:
            cur.execute(
                "SELECT state, COUNT(*), COALESCE(SUM(total - succeeded - failed), 0), "
                "COALESCE(SUM(succeeded), 0), COALESCE(SUM(failed), 0) "
                "FROM {p}campaigns GROUP BY state"
            )
            return [
                (str(state), int(n), int(pending), int(ok), int(bad))
                for state, n, pending, ok, bad in cur.fetchall()
            ]

    def shard_at_offset(self, campaign_id: str, offset: int) -> int:
        """Sequence number of the shard holding stream offset ``offset``."""
        with self._tx() as cur:
            cur.execute(
                "SELECT MAX(seq) FROM {p}shards WHERE campaign = ? "
                "AND first_offset <= ?",
                (campaign_id, offset),
            )
            (seq,) = cur.fetchone()
        return 0 if seq is None else int(seq)


class _Cursor:
    """A DB-API cursor whose statements go through the dialect shim."""

    def __init__(self, cur: Any, translate: Any) -> None:
        self._cur = cur
        self._translate = translate

    def execute(self, statement: str, args: tuple[Any, ...] = ()) -> None:
        self._cur.execute(self._translate(statement), args)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)


def _campaign(row: Sequence[Any]) -> CampaignRecord:
    values = list(row)
    values[6] = json.loads(values[6])
    return CampaignRecord(*values)
