"""Summaries of a load run: throughput, latency percentiles, errors by code.

Every call of a run is one :class:`CallRecord`; :func:`summarise` turns a list of them
into the figures the README reports, and :func:`plot_runs` draws latency and
throughput over time, one colour per scenario.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True)
class CallRecord:
    """One RPC as the load generator saw it.

    Attributes:
        start_s: start time, s since the run began.
        latency_s: wall time until the last response byte, s.
        code: gRPC status name, ``OK`` on success.
        structures: structures sent in the call.
        atoms: atoms sent in the call.
        tenant: which tenant (API key label) made it.
    """

    start_s: float
    latency_s: float
    code: str
    structures: int
    atoms: int
    tenant: str = "default"


@dataclass
class RunSummary:
    """Figures of one scenario run (JSON-ready through :meth:`to_dict`)."""

    scenario: str
    target: str
    wall_s: float
    calls: int
    ok: int
    errors_by_code: dict[str, int]
    structures_ok: int
    atoms_ok: int
    calls_per_s: float
    structures_per_s: float
    atoms_per_s: float
    latency_ms: dict[str, float]
    per_tenant: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values.

    Raises:
        ValueError: if q is outside [0, 100].
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _latency_ms(records: Sequence[CallRecord]) -> dict[str, float]:
    """p50/p95/p99 and mean latency of the successful calls, ms."""
    values = [r.latency_s * 1000.0 for r in records if r.code == "OK"]
    out = {f"p{q:g}": round(percentile(values, q), 3) for q in PERCENTILES}
    out["mean"] = round(sum(values) / len(values), 3) if values else math.nan
    return out


def summarise(
    scenario: str, target: str, records: Sequence[CallRecord], wall_s: float
) -> RunSummary:
    """Throughput, latency percentiles and errors of one run.

    Args:
        scenario: scenario name.
        target: ``host:port`` that was loaded.
        records: every call made.
        wall_s: wall time of the whole run, s (> 0).

    Returns:
        The run's summary; rates are per second of ``wall_s``.

    Raises:
        ValueError: if ``wall_s`` is not positive.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, got {wall_s}")
    ok = [r for r in records if r.code == "OK"]
    errors = Counter(r.code for r in records if r.code != "OK")
    tenants = sorted({r.tenant for r in records})
    per_tenant = {}
    for tenant in tenants:
        mine = [r for r in records if r.tenant == tenant]
        mine_ok = [r for r in mine if r.code == "OK"]
        per_tenant[tenant] = {
            "calls": len(mine),
            "ok": len(mine_ok),
            "structures_per_s": round(sum(r.structures for r in mine_ok) / wall_s, 3),
            "latency_ms": _latency_ms(mine),
        }
    structures = sum(r.structures for r in ok)
    atoms = sum(r.atoms for r in ok)
    return RunSummary(
        scenario=scenario,
        target=target,
        wall_s=round(wall_s, 3),
        calls=len(records),
        ok=len(ok),
        errors_by_code=dict(sorted(errors.items())),
        structures_ok=structures,
        atoms_ok=atoms,
        calls_per_s=round(len(ok) / wall_s, 3),
        structures_per_s=round(structures / wall_s, 3),
        atoms_per_s=round(atoms / wall_s, 3),
        latency_ms=_latency_ms(records),
        per_tenant=per_tenant,
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(payload), indent=2, sort_keys=False)
    path.write_text(text + "\n")


def _finite(value: Any) -> Any:
    """NaN and infinities to None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def plot_runs(
    path: Path, runs: Mapping[str, Sequence[CallRecord]], bin_s: float
) -> None:
    """Latency of every call and completed structures/s over time, per scenario.

    Args:
        path: PNG to write.
        runs: scenario name -> its call records.
        bin_s: width of the throughput bins, s.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_thr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name, records in runs.items():
        ok = [r for r in records if r.code == "OK"]
        failed = [r for r in records if r.code != "OK"]
        ax_lat.scatter(
            [r.start_s + r.latency_s for r in ok],
            [r.latency_s * 1000 for r in ok],
            s=4,
            label=name,
        )
        if failed:
            ax_lat.scatter(
                [r.start_s + r.latency_s for r in failed],
                [r.latency_s * 1000 for r in failed],
                s=12,
                marker="x",
                label=f"{name} errors",
            )
        times, rates = throughput_series(ok, bin_s)
        ax_thr.step(times, rates, where="post", label=name)
    ax_lat.set_ylabel("latency, ms")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper right", fontsize=8)
    ax_thr.set_ylabel("structures/s")
    ax_thr.set_xlabel("time since start of the scenario, s")
    ax_thr.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def throughput_series(
    records: Sequence[CallRecord], bin_s: float
) -> tuple[list[float], list[float]]:
    """Structures completed per second in consecutive bins of ``bin_s`` seconds.

    Returns:
        Bin start times (s) and rates (structures/s), same length.

    Raises:
        ValueError: if ``bin_s`` is not positive.
    """
    if bin_s <= 0:
        raise ValueError(f"bin_s must be positive, got {bin_s}")
    if not records:
        return [], []
    end = max(r.start_s + r.latency_s for r in records)
    n_bins = int(end // bin_s) + 1
    counts = [0] * n_bins
    for r in records:
        counts[int((r.start_s + r.latency_s) // bin_s)] += r.structures
    return [i * bin_s for i in range(n_bins)], [c / bin_s for c in counts]
