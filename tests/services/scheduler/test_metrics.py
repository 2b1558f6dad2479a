"""Campaign metrics from the store: names, labels and values at scrape time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.scheduler import store
from services.scheduler.config import SchedulerConfig
from services.scheduler.executors import StandInExecutor, WorkSpec
from services.scheduler.metrics import CampaignCollector
from services.scheduler.scheduler import Scheduler
from tests.services.scheduler.campaign_helpers import tiny_structures

SPEC = WorkSpec("stand-in", "", "single_point")


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[str, ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.values()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_campaign_metrics_count_states_pending_and_completed(tmp_path: Path) -> None:
    async def scenario() -> dict[tuple[str, tuple[str, ...]], float]:
        config = SchedulerConfig(data_dir=tmp_path, chunk_size=4, poll_interval_s=0.02)
        sched = Scheduler(config, StandInExecutor())
        await sched.start()
        done = await sched.submit("alice", "done", SPEC)
        await sched.append("alice", done.id, 0, tiny_structures(10), last=True)
        waiting = await sched.submit("bob", "waiting", SPEC)
        await sched.cancel("bob", waiting.id)
        still_open = await sched.submit("bob", "open", SPEC)
        deadline = time.monotonic() + 30
        while (await sched.get("alice", done.id)).record.state != store.COMPLETED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await sched.stop()
        registry = CollectorRegistry()
        registry.register(CampaignCollector(sched.totals))
        assert still_open.state == store.OPEN
        return _samples(registry)

    samples = asyncio.run(scenario())
    assert samples[("equiserve_campaigns", ("completed",))] == 1
    assert samples[("equiserve_campaigns", ("cancelled",))] == 1
    assert samples[("equiserve_campaigns", ("open",))] == 1
    assert samples[("equiserve_campaigns", ("failed",))] == 0
    assert samples[("equiserve_campaign_structures_pending", ("running",))] == 0
    completed = "equiserve_campaign_structures_completed_total"
    assert samples[(completed, ("succeeded",))] == 10
    assert samples[(completed, ("failed",))] == 0


def test_a_failing_source_of_totals_skips_only_the_campaign_metrics() -> None:
    def broken() -> list[tuple[str, int, int, int, int]]:
        raise ConnectionError("scheduler restarting")

    registry = CollectorRegistry()
    registry.register(CampaignCollector(broken))
    assert _samples(registry) == {}
