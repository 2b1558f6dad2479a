"""gRPC load generator for equiserve: bounded in calls and time, loopback only.

Scenarios:

* ``small``: many small unary Predict calls (one 8-atom cell each) from many
  concurrent callers: the request-overhead and batching path.
* ``tenants``: several tenants (one API key and channel each) at once, each with its
  own concurrent callers: throughput and latency per tenant.
* ``campaign``: a large single-point campaign submitted in chunks through the campaign
  API and watched to completion: sustained throughput through the scheduler.

Each scenario stops at whichever comes first: ``max_calls`` calls or ``duration_s``
seconds (``campaign``: ``campaign_duration_s``, then the campaign is cancelled).
Results go to ``<out>/loadtest.json`` and ``<out>/loadtest.png``.

Usage::

    python -m load_tests.loadgen --target 127.0.0.1:50051 \\
        --api-key tenant-a:KEY [--api-key tenant-b:KEY2] \\
        --scenario small,tenants,campaign --duration 20 --max-calls 2000 --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from load_tests.stats import CallRecord, RunSummary, plot_runs, summarise, write_json

logger = logging.getLogger(__name__)

API_KEY_METADATA = "x-api-key"
SCENARIOS = ("small", "tenants", "campaign")
# Hard ceilings whatever the command line says: a load test must end.
MAX_CALLS_CEILING = 1_000_000
MAX_DURATION_CEILING_S = 6 * 3600.0


class NonLoopbackTargetError(ValueError):
    """The target resolves to an address that is not loopback."""


@dataclass(frozen=True)
class Tenant:
    """An API key and the name it is reported under."""

    name: str
    key: str


@dataclass(frozen=True)
class LoadConfig:
    """What to load and how hard.

    Attributes:
        target: ``host:port`` of the gateway (loopback only).
        tenants: API keys; the ``tenants`` scenario uses each of them.
        model: model name sent in each request.
        backend: backend name ("" for the model's default).
        concurrency: concurrent callers (per tenant in ``tenants``).
        max_calls: most calls per scenario.
        duration_s: most seconds per scenario.
        call_timeout_s: deadline of each call, s.
        atoms: atoms per structure (8 times a cube: 8, 64, 216, ...).
        structures_per_call: structures per Predict call.
        campaign_structures: structures in the ``campaign`` scenario.
        campaign_chunk: structures per AppendStructures call.
        campaign_duration_s: most seconds of the ``campaign`` scenario (a
            campaign's first results arrive only when its first work unit is done).
        seed: seed of the rattled structures.
    """

    target: str
    tenants: tuple[Tenant, ...]
    model: str = "sevennet-0"
    backend: str = ""
    concurrency: int = 8
    max_calls: int = 2000
    duration_s: float = 20.0
    call_timeout_s: float = 60.0
    atoms: int = 8
    structures_per_call: int = 1
    campaign_structures: int = 2000
    campaign_chunk: int = 500
    campaign_duration_s: float = 120.0
    seed: int = 0
    extra_metadata: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.tenants:
            raise ValueError("no API key given: pass --api-key tenant:key")
        if not 0 < self.max_calls <= MAX_CALLS_CEILING:
            raise ValueError(
                f"max_calls must lie in (0, {MAX_CALLS_CEILING}], got {self.max_calls}"
            )
        if not 0 < self.duration_s <= MAX_DURATION_CEILING_S:
            raise ValueError(
                f"duration_s must lie in (0, {MAX_DURATION_CEILING_S}], "
                f"got {self.duration_s}"
            )
        if not 0 < self.campaign_duration_s <= MAX_DURATION_CEILING_S:
            raise ValueError(
                f"campaign_duration_s must lie in (0, {MAX_DURATION_CEILING_S}], "
                f"got {self.campaign_duration_s}"
            )
        if self.concurrency < 1 or self.structures_per_call < 1:
            raise ValueError(
                "concurrency and structures_per_call must be at least 1, got "
                f"{self.concurrency} and {self.structures_per_call}"
            )


def ensure_loopback(target: str) -> tuple[str, int]:
    """Split ``host:port`` and check that every address of ``host`` is loopback.

    Args:
        target: ``host:port``; host a name or an IPv4/IPv6 literal (``[::1]:50051``).

    Returns:
        The host and the port.

    Raises:
        NonLoopbackTargetError: if the host resolves to any non-loopback address.
        ValueError: if the target is not ``host:port``.
    """
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"target must be host:port, got {target!r}")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port_text), proto=socket.IPPROTO_TCP)
    except socket.gaierror as err:
        raise NonLoopbackTargetError(
            f"cannot resolve {host!r} ({err}); the load generator only loads "
            "loopback targets such as 127.0.0.1:50051"
        ) from err
    addresses = {info[4][0] for info in infos}
    outside = sorted(a for a in addresses if not ipaddress.ip_address(a).is_loopback)
    if outside:
        raise NonLoopbackTargetError(
            f"target {target!r} resolves to non-loopback {outside}; the load "
            "generator refuses anything but loopback (127.0.0.0/8, ::1)"
        )
    return host, int(port_text)


def silicon_cells(n: int, atoms: int, seed: int) -> list[Any]:
    """``n`` rattled diamond-silicon supercells of ``atoms`` atoms, as protobufs.

    Raises:
        ValueError: if ``atoms`` is not 8 times a cube (8, 64, 216, ...).
    """
    from ase.build import bulk
    from equiserve.v1 import structure_pb2

    reps = round((atoms / 8) ** (1 / 3))
    if 8 * reps**3 != atoms:
        raise ValueError(f"atoms must be 8 x a cube (8, 64, 216, ...), got {atoms}")
    base = bulk("Si", "diamond", a=5.43, cubic=True).repeat((reps, reps, reps))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        positions = base.positions + rng.normal(0.0, 0.03, base.positions.shape)
        out.append(
            structure_pb2.Structure(
                atomic_numbers=base.numbers.tolist(),
                positions=positions.ravel().tolist(),
                cell=np.asarray(base.cell).ravel().tolist(),
                pbc=[True, True, True],
                id=f"si{atoms}-{i}",
            )
        )
    return out


def _channel(target: str) -> grpc.aio.Channel:
    """An insecure channel (loopback only) with a 64 MiB message limit."""
    limit = 64 * 1024 * 1024
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ],
    )


async def _bounded(
    config: LoadConfig,
    callers: int,
    call: Callable[[int], Awaitable[CallRecord]],
) -> list[CallRecord]:
    """Run ``callers`` loops of ``call`` until max_calls or duration_s is reached."""
    records: list[CallRecord] = []
    issued = 0
    deadline = time.monotonic() + config.duration_s

    async def loop() -> None:
        nonlocal issued
        while issued < config.max_calls and time.monotonic() < deadline:
            issued += 1
            records.append(await call(issued))

    await asyncio.gather(*(loop() for _ in range(callers)))
    return records


async def _predict_call(
    stub: Any,
    request: Any,
    tenant: Tenant,
    t0: float,
    timeout_s: float,
) -> CallRecord:
    """One unary Predict; its latency and status (per-structure errors count OK)."""
    start = time.perf_counter()
    code = "OK"
    try:
        await stub.Predict(
            request, timeout=timeout_s, metadata=((API_KEY_METADATA, tenant.key),)
        )
    except grpc.aio.AioRpcError as err:
        code = err.code().name
    latency = time.perf_counter() - start
    atoms = sum(len(s.atomic_numbers) for s in request.structures)
    return CallRecord(
        start - t0, latency, code, len(request.structures), atoms, tenant.name
    )


async def run_predict(
    config: LoadConfig, tenants: Sequence[Tenant]
) -> tuple[list[CallRecord], float]:
    """Concurrent unary Predict calls from each tenant; the records and wall time."""
    from equiserve.v1 import predict_pb2, predict_pb2_grpc

    cells = silicon_cells(64, config.atoms, config.seed)
    channels = [_channel(config.target) for _ in tenants]
    try:
        t0 = time.perf_counter()
        jobs = []
        per_tenant = max(1, config.max_calls // len(tenants))
        for tenant, channel in zip(tenants, channels):
            stub = predict_pb2_grpc.PredictServiceStub(channel)

            def make_call(i: int, stub: Any = stub, tenant: Tenant = tenant) -> Any:
                picked = [
                    cells[(i * config.structures_per_call + k) % len(cells)]
                    for k in range(config.structures_per_call)
                ]
                # no properties: energy and forces, the common request
                request = predict_pb2.PredictRequest(
                    model=config.model, backend=config.backend, structures=picked
                )
                return _predict_call(stub, request, tenant, t0, config.call_timeout_s)

            mine = _replace_calls(config, per_tenant)
            jobs.append(_bounded(mine, config.concurrency, make_call))
        results = await asyncio.gather(*jobs)
        wall = time.perf_counter() - t0
    finally:
        for channel in channels:
            await channel.close()
    return [r for part in results for r in part], wall


def _replace_calls(config: LoadConfig, max_calls: int) -> LoadConfig:
    """The same config with another call bound."""
    from dataclasses import replace

    return replace(config, max_calls=max_calls)


async def run_scenario(
    name: str, config: LoadConfig
) -> tuple[RunSummary, list[CallRecord]]:
    """Run one named scenario against ``config.target``; its summary and records.

    Raises:
        ValueError: for an unknown scenario, or ``tenants`` with fewer than two keys.
        NonLoopbackTargetError: if the target is not loopback.
    """
    ensure_loopback(config.target)
    extra: dict[str, Any] = {}
    if name == "small":
        records, wall = await run_predict(config, config.tenants[:1])
    elif name == "tenants":
        if len(config.tenants) < 2:
            raise ValueError(
                "the tenants scenario needs at least two API keys "
                f"(--api-key a:KEY --api-key b:KEY2), got {len(config.tenants)}"
            )
        records, wall = await run_predict(config, config.tenants)
    elif name == "campaign":
        from load_tests.campaign_load import run_campaign

        records, wall, extra = await run_campaign(config)
    else:
        raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")
    summary = summarise(name, config.target, records, wall)
    summary.extra = extra
    if name == "campaign":
        # the campaign's computed structures, not the appends, are its throughput;
        # its latency_ms is that of the AppendStructures calls
        summary.structures_ok = extra.get("succeeded", 0)
        summary.structures_per_s = extra.get("campaign_structures_per_s", 0.0)
        summary.atoms_ok = summary.structures_ok * config.atoms
        summary.atoms_per_s = round(summary.structures_per_s * config.atoms, 3)
    summary.extra["config"] = {
        "concurrency": config.concurrency,
        "max_calls": config.max_calls,
        "duration_s": config.duration_s,
        "atoms": config.atoms,
        "structures_per_call": config.structures_per_call,
        "tenants": len(config.tenants) if name == "tenants" else 1,
    }
    return summary, records


async def run_all(
    scenarios: Sequence[str], config: LoadConfig, out: Path
) -> list[RunSummary]:
    """Run scenarios one after another; write loadtest.json and loadtest.png."""
    summaries: list[RunSummary] = []
    runs: dict[str, list[CallRecord]] = {}
    for name in scenarios:
        logger.info("scenario %s against %s", name, config.target)
        summary, records = await run_scenario(name, config)
        summaries.append(summary)
        runs[name] = [r for r in records if r.structures > 0]
        logger.info(
            "%s: %d calls, %.1f structures/s, p50 %.1f ms, p99 %.1f ms, errors %s",
            name, summary.calls, summary.structures_per_s,
            summary.latency_ms["p50"], summary.latency_ms["p99"],
            summary.errors_by_code,
        )  # fmt: skip
    write_json(out / "loadtest.json", {"runs": [s.to_dict() for s in summaries]})
    plot_runs(out / "loadtest.png", runs, bin_s=max(config.duration_s / 20, 1.0))
    return summaries


def _tenant(text: str) -> Tenant:
    name, sep, key = text.partition(":")
    if not sep or not name or not key:
        raise argparse.ArgumentTypeError(f"expected tenant:key, got {text!r}")
    return Tenant(name, key)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description="equiserve gRPC load generator")
    p.add_argument("--target", default="127.0.0.1:50051", help="loopback host:port")
    p.add_argument("--api-key", type=_tenant, action="append", required=True,
                   help="tenant:key (repeat for several tenants)")  # fmt: skip
    p.add_argument("--scenario", default="small,tenants,campaign")
    p.add_argument("--model", default="sevennet-0")
    p.add_argument("--backend", default="")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-calls", type=int, default=2000)
    p.add_argument("--duration", type=float, default=20.0, help="s per scenario")
    p.add_argument("--atoms", type=int, default=8)
    p.add_argument("--structures-per-call", type=int, default=1)
    p.add_argument("--campaign-structures", type=int, default=2000)
    p.add_argument("--campaign-duration", type=float, default=120.0)
    p.add_argument("--out", type=Path, default=Path("load_results"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the scenarios, print one line per scenario."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    config = LoadConfig(
        target=args.target,
        tenants=tuple(args.api_key),
        model=args.model,
        backend=args.backend,
        concurrency=args.concurrency,
        max_calls=args.max_calls,
        duration_s=args.duration,
        atoms=args.atoms,
        structures_per_call=args.structures_per_call,
        campaign_structures=args.campaign_structures,
        campaign_duration_s=args.campaign_duration,
    )
    ensure_loopback(config.target)
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    summaries = asyncio.run(run_all(scenarios, config, args.out))
    for s in summaries:
        print(
            f"{s.scenario:9s} calls {s.calls:6d}  ok {s.ok:6d}  "
            f"{s.structures_per_s:8.2f} structures/s  {s.atoms_per_s:9.1f} atoms/s  "
            f"p50 {s.latency_ms['p50']:8.1f} ms  p95 {s.latency_ms['p95']:8.1f} ms  "
            f"p99 {s.latency_ms['p99']:8.1f} ms  errors {s.errors_by_code}"
        )
    print(f"wrote {args.out / 'loadtest.json'} and {args.out / 'loadtest.png'}")
    return 0 if all(not s.errors_by_code for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
