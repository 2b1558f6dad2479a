"""``make load-test``: start the local platform, load it, write the report, stop it.

Usage::

    python -m load_tests.run_local [--scenario small,tenants,campaign]
        [--duration 20] [--max-calls 2000] [--concurrency 8] [--out load_results]

The platform (gateway, Ray, one ``sevennet-0/fused`` replica) runs on loopback
ports with fresh API keys; its log goes to ``<out>/platform.log``. The report is
``<out>/loadtest.json`` and ``<out>/loadtest.png`` (see :mod:`load_tests.loadgen`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform as host
from collections.abc import Sequence
from pathlib import Path

from load_tests.loadgen import LoadConfig, Tenant, run_all
from load_tests.platform import LocalPlatform
from load_tests.stats import write_json

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default="small,tenants,campaign")
    p.add_argument("--duration", type=float, default=20.0, help="s per scenario")
    p.add_argument("--max-calls", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--atoms", type=int, default=8)
    p.add_argument("--campaign-structures", type=int, default=400)
    p.add_argument("--campaign-duration", type=float, default=120.0)
    p.add_argument("--replica-cpus", default="1")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--out", type=Path, default=Path("load_results"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: one platform, the chosen scenarios, one report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    env = {"EQUISERVE_REPLICA_CPUS": args.replica_cpus}
    with LocalPlatform(args.out / "platform.log", env, args.num_cpus) as platform:
        config = LoadConfig(
            target=platform.target,
            tenants=tuple(Tenant(name, key) for name, key in platform.keys.items()),
            concurrency=args.concurrency,
            max_calls=args.max_calls,
            duration_s=args.duration,
            atoms=args.atoms,
            campaign_structures=args.campaign_structures,
            campaign_duration_s=args.campaign_duration,
        )
        summaries = asyncio.run(run_all(scenarios, config, args.out))
        problems = check_monitoring(platform.metrics_url)
    write_json(
        args.out / "environment.json",
        {"machine": host.machine(), "cpus": _cpus(), "python": host.python_version(),
         "load_average_1_5_15": _load_average(),
         "platform_env": {k: v for k, v in platform.env.items() if "KEY" not in k}},
    )  # fmt: skip
    for s in summaries:
        print(
            f"{s.scenario:9s} calls {s.calls:6d} ok {s.ok:6d} "
            f"{s.structures_per_s:8.2f} structures/s {s.atoms_per_s:9.1f} atoms/s "
            f"p50 {s.latency_ms['p50']:8.1f} ms p95 {s.latency_ms['p95']:8.1f} ms "
            f"p99 {s.latency_ms['p99']:8.1f} ms errors {s.errors_by_code}"
        )
    for problem in problems:
        print(f"monitoring: {problem}")
    print(f"monitoring: {len(problems)} PromQL problems against the live /metrics")
    write_json(args.out / "monitoring_check.json", {"problems": problems})
    return 0 if all(not s.errors_by_code for s in summaries) and not problems else 1


def check_monitoring(metrics_url: str) -> list[str]:
    """Dashboard and rule expressions against the running platform's ``/metrics``.

    Returns:
        One line per expression that reads a series or label the platform does not
        export (empty when all is well).
    """
    import json
    import urllib.request

    import yaml

    from load_tests.promql import (
        check_expressions,
        dashboard_expressions,
        exported_series,
        recorded_names,
        rule_expressions,
    )

    monitoring = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
    rules = yaml.safe_load((monitoring / "rules.yml").read_text())
    dashboard = json.loads((monitoring / "dashboards" / "equiserve.json").read_text())
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        exported = exported_series(reply.read().decode())
    expressions = [*rule_expressions(rules), *dashboard_expressions(dashboard)]
    found = check_expressions(expressions, exported, recorded_names(rules))
    return [f"{p.where}: {p.message}" for p in found]


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _load_average() -> list[float]:
    """The machine's load at the end of the run (other users share the cores)."""
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    raise SystemExit(main())
