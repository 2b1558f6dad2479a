"""Campaign metrics, computed from the store at scrape time.

Three families, no campaign or tenant labels (their cardinality is bounded by the
five states and two outcomes):

- ``equiserve_campaigns{state}``: campaigns per state (gauge).
- ``equiserve_campaign_structures_pending{campaign_state}``: structures of open and
  running campaigns without a result yet (gauge).
- ``equiserve_campaign_structures_completed_total{outcome}``: structures with a
  result, ``succeeded`` or ``failed`` (counter: campaigns are never deleted, so the
  sum only grows).

The values live in the store, so any process can export them; the gateway does, by
registering :class:`CampaignCollector` on its registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.scheduler import store

logger = logging.getLogger(__name__)

STATES = (store.OPEN, store.RUNNING, store.COMPLETED, store.CANCELLED, store.FAILED)
Totals = list[tuple[str, int, int, int, int]]


class CampaignCollector(Collector):
    """Campaign metrics from ``totals()`` (see :meth:`Store.totals`).

    Args:
        totals: returns ``(state, campaigns, pending, succeeded, failed)`` rows; a
            failure skips this scrape's campaign metrics (logged), never the
            gateway's own.
    """

    def __init__(self, totals: Callable[[], Totals]) -> None:
        self._totals = totals

    def describe(self) -> Iterator[Metric]:
        return iter(self._families({}))

    def collect(self) -> Iterator[Metric]:
        try:
            rows = self._totals()
        except Exception:
            logger.warning("campaign metrics unavailable this scrape", exc_info=True)
            return iter(())
        return iter(self._families({row[0]: row[1:] for row in rows}))

    @staticmethod
    def _families(by_state: dict[str, tuple[int, int, int, int]]) -> list[Metric]:
        campaigns = GaugeMetricFamily(
            "equiserve_campaigns", "Campaigns per state.", labels=["state"]
        )
        pending = GaugeMetricFamily(
            "equiserve_campaign_structures_pending",
            "Structures of open and running campaigns without a result yet.",
            labels=["campaign_state"],
        )
        completed = CounterMetricFamily(
            "equiserve_campaign_structures_completed",
            "Structures of all campaigns with a result (value or error).",
            labels=["outcome"],
        )
        for state in STATES:
            n, left, _, _ = by_state.get(state, (0, 0, 0, 0))
            campaigns.add_metric([state], n)
            if state in store.ACTIVE_STATES:
                pending.add_metric([state], left)
        completed.add_metric(["succeeded"], sum(v[2] for v in by_state.values()))
        completed.add_metric(["failed"], sum(v[3] for v in by_state.values()))
        return [campaigns, pending, completed]
