"""``make run``: a screening campaign end to end on one machine.

Starts a private local Ray and Serve, deploys SevenNet-0 (fused backend), starts
the campaign scheduler actor (embedded SQLite store) and the gateway with the
CampaignService, then acts as a user would with the ``equiserve`` client: submits
the shipped sample set (``services/data/campaign_samples.extxyz``) as a relaxation
campaign, uploads it in chunks, watches it to completion, writes the results
(extxyz and CSV) and prints a summary: the lowest energies per atom and the
throughput. Everything it started is stopped at the end.

    python -m services.demo [--task relax|single_point] [--out .equiserve/demo]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("services.demo")

SAMPLES = Path(__file__).parent / "data" / "campaign_samples.extxyz"
MODEL, BACKEND = "sevennet-0", "fused"
TENANT = "demo"
TOP = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--task", choices=["relax", "single_point"], default="relax")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(".equiserve/demo"))
    parser.add_argument("--num-cpus", type=int, default=2, help="Ray CPUs")
    parser.add_argument("--chunk-size", type=int, default=8, help="upload chunk")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logger.setLevel(logging.INFO)
    # keep the replicas' per-call access log out of the demo's terminal
    os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    from services.serve_main import start_ray

    started = time.monotonic()
    start_ray(args.num_cpus, attach_only=False)
    try:
        return asyncio.run(run(args, started))
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


async def run(args: argparse.Namespace, started: float) -> int:
    """Deploy, start scheduler and gateway, run the campaign as a client would."""
    import ray

    from services.config import DeploymentConfig, ReplicaOptions, Settings
    from services.deployments.app import deploy
    from services.gateway.server import build_server
    from services.gateway.targets import connect_targets
    from services.metrics import ServingMetrics
    from services.scheduler.ray_backend import ACTOR_NAME, NAMESPACE, campaign_service
    from services.scheduler.scheduler import SchedulerConfig

    key = secrets.token_hex(16)
    deployment = DeploymentConfig(MODEL, BACKEND)
    settings = Settings(
        grpc_address="127.0.0.1:0", metrics_port=0, api_keys={key: TENANT},
        deployments=(deployment,),
        replica=ReplicaOptions(num_cpus=1.0, torch_threads=args.num_cpus),
    )  # fmt: skip
    logger.info(
        "deploying %s/%s on Ray Serve (loads and warms the model)", *deployment.key
    )
    handles = await asyncio.to_thread(deploy, settings)
    table = await connect_targets(settings, handles)

    config = SchedulerConfig(
        data_dir=args.out.resolve() / "scheduler", chunk_size=8, max_in_flight=4
    )
    metrics = ServingMetrics(table.pairs)
    hook = await asyncio.to_thread(campaign_service, settings, config, metrics.registry)
    gateway = build_server(settings, table, extra_servicers=[hook], metrics=metrics)
    await gateway.start(serve_metrics=False)
    address = f"127.0.0.1:{gateway.port}"
    logger.info(
        "gateway on %s, ready after %.0f s", address, time.monotonic() - started
    )
    try:
        return await asyncio.to_thread(client_session, address, key, args)
    finally:
        await gateway.stop(grace=1.0)
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE))


def client_session(address: str, key: str, args: argparse.Namespace) -> int:
    """What a user does with the CLI: submit, upload, watch, fetch, summarise."""
    from tqdm import tqdm

    from services.cli.campaigns import CampaignClient, RelaxOptions
    from services.cli.main import _watch, read_structures
    from services.cli.output import summary_rows, write_results

    relax = RelaxOptions(args.fmax, args.max_steps, relax_cell=True)
    with CampaignClient(address, key) as client:
        campaign = client.submit("demo", MODEL, BACKEND, args.task, relax)
        began = time.monotonic()
        with tqdm(desc="upload", unit="structure", file=sys.stderr) as bar:
            client.upload(
                campaign.id,
                read_structures([args.samples]),
                args.chunk_size,
                bar.update,
            )
        status = _watch(client, campaign.id, 0.5)
        wall = time.monotonic() - began
        table = client.fetch(campaign.id)
        final = client.get(campaign.id)

    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("results.extxyz", "results.csv"):
        write_results(table, args.out / name)
    print_summary(summary_rows(table.to_pylist()), final, wall, args.out)
    return status


def print_summary(
    rows: list[dict[str, Any]], campaign: Any, wall: float, out: Path
) -> None:
    """The lowest energies per atom and the campaign's figures."""
    ok = [r for r in rows if not r["error_reason"]]
    ok.sort(key=lambda r: r["energy_per_atom"])
    print(f"\ncampaign {campaign.id}: {campaign.succeeded} succeeded, "
          f"{campaign.failed} failed of {campaign.total}")  # fmt: skip
    print(f"{'id':24} {'formula':>8} {'E/atom (eV)':>12} {'fmax':>7} {'steps':>6} conv")
    for r in ok[:TOP]:
        print(
            f"{r['id']:24} {r['formula']:>8} {r['energy_per_atom']:12.4f} "
            f"{r['fmax']:7.3f} {r['steps']:6d} {'yes' if r['converged'] else 'no'}"
        )
    converged = sum(1 for r in ok if r["converged"])
    print(
        f"\n{converged}/{len(rows)} converged; {len(rows)} structures in {wall:.1f} s "
        f"= {len(rows) / wall:.2f} structures/s (upload to last result)"
    )
    print(f"results: {out / 'results.extxyz'}, {out / 'results.csv'}")


if __name__ == "__main__":
    sys.exit(main())
