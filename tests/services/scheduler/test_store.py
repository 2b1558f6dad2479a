"""The store's guarantees, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import time

import pytest

from services.scheduler import store
from tests.services.scheduler.campaign_helpers import open_store


def _campaign(campaign_id: str = "c1", tenant: str = "alice") -> store.CampaignRecord:
    now = time.time()
    return store.CampaignRecord(
        id=campaign_id, tenant=tenant, name="n", model="m", backend="b",
        task="single_point", params={"relax": {}}, priority=0, state=store.OPEN,
        total=0, succeeded=0, failed=0, n_tasks=0, n_shards=0, created=now,
        updated=now, message="",
    )  # fmt: skip


def test_appends_are_idempotent_and_gaps_are_refused(store_url: str) -> None:
    db = open_store(store_url)
    db.create_campaign(_campaign())

    assert db.add_tasks("c1", 0, [(10, "a"), (5, "b")], seal=False) == 15
    # the same append again (a retried call) changes nothing
    assert db.add_tasks("c1", 0, [(10, "a"), (5, "b")], seal=False) == 15
    with pytest.raises(store.StoreError, match="resend from 15"):
        db.add_tasks("c1", 20, [(1, "c")], seal=False)
    assert db.add_tasks("c1", 15, [(1, "c")], seal=True) == 16

    record = db.get_campaign("c1")
    assert record is not None
    assert (record.total, record.n_tasks, record.state) == (16, 3, store.RUNNING)
    with pytest.raises(store.StoreError, match="not open"):
        db.add_tasks("c1", 16, [(1, "d")], seal=False)


def test_a_task_is_recorded_exactly_once(store_url: str) -> None:
    db = open_store(store_url)
    db.create_campaign(_campaign())
    db.add_tasks("c1", 0, [(4, "a"), (4, "b")], seal=True)

    first = db.claim_task("c1")
    second = db.claim_task("c1")
    assert first is not None and second is not None
    assert (first.task_no, second.task_no) == (0, 1)
    assert db.claim_task("c1") is None

    assert db.complete_task(second, "r1", succeeded=3, failed=1)
    assert not db.complete_task(second, "r1", succeeded=3, failed=1)
    assert db.complete_task(first, "r0", succeeded=4, failed=0)

    record = db.get_campaign("c1")
    assert record is not None
    assert (record.succeeded, record.failed, record.state) == (7, 1, store.COMPLETED)
    shards = db.shards("c1")
    assert [(s.seq, s.task_no, s.first_offset) for s in shards] == [
        (0, 1, 0),
        (1, 0, 4),
    ]
    assert db.shard_at_offset("c1", 5) == 1


def test_claimed_tasks_go_back_to_the_queue_after_a_restart(store_url: str) -> None:
    db = open_store(store_url)
    db.create_campaign(_campaign())
    db.add_tasks("c1", 0, [(1, "a"), (1, "b")], seal=True)
    assert db.claim_task("c1") is not None

    reopened = open_store(store_url)
    assert reopened.requeue_claimed() == 1
    claimed = reopened.claim_task("c1")
    assert claimed is not None and claimed.task_no == 0 and claimed.attempts == 2


def test_a_released_task_waits_for_its_delay(store_url: str) -> None:
    db = open_store(store_url)
    db.create_campaign(_campaign())
    db.add_tasks("c1", 0, [(1, "a")], seal=True)
    task = db.claim_task("c1")
    assert task is not None

    db.release_task(task, delay_s=60.0, error="replica died")
    assert db.claim_task("c1") is None
    assert db.runnable_campaigns() == []
    assert db.claim_task("c1", now=time.time() + 61) is not None


def test_tenants_list_only_their_own_campaigns(store_url: str) -> None:
    db = open_store(store_url)
    db.create_campaign(_campaign("c1", "alice"))
    db.create_campaign(_campaign("c2", "bob"))
    assert [c.id for c in db.list_campaigns("alice")] == ["c1"]


def test_prefix_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="prefix"):
        store.Store("sqlite://:memory:", prefix="x; DROP TABLE y")
