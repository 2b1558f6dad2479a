"""Run the serving platform in the foreground: Ray, Serve deployments, gateway.

``make serve`` (or ``python -m services.serve_main``) starts a local Ray (or joins
the one named by ``RAY_ADDRESS``, as in a KubeRay head pod), deploys every
configured (model, backend) (or, with ``EQUISERVE_ATTACH=true``, attaches to the
applications a RayService's ``serveConfigV2`` deployed through
:func:`services.deployments.app.app_builder`), waits for their warm-up, then
serves gRPC until SIGINT/SIGTERM, when it drains gracefully (health NOT_SERVING,
grace period) and shuts down what it started. Settings come from the environment
(:mod:`services.config`); ``EQUISERVE_CAMPAIGNS=false`` leaves out the campaign
service (on by default).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile

from services.config import Settings
from services.deployments.app import attach, deploy, replica_counts
from services.gateway.server import build_server
from services.gateway.targets import connect_targets
from services.metrics import ServingMetrics

logger = logging.getLogger("services.serve_main")


def start_ray(num_cpus: int | None, attach_only: bool) -> bool:
    """Join ``RAY_ADDRESS`` if set, else start a private local Ray.

    Args:
        num_cpus: CPUs of a local Ray (``None``: all).
        attach_only: Serve already runs the applications; do not start Serve.

    Returns:
        True when this process started Ray (and so must stop it).
    """
    import ray
    from ray import serve

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        started = False
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
            logging_level=logging.WARNING,
        )
        started = True
    if not attach_only:
        serve.start(proxy_location="Disabled")
    return started


async def run(settings: Settings, attach_only: bool) -> None:
    """Deploy (or attach), serve until a signal, then drain."""
    handles = await asyncio.to_thread(attach if attach_only else deploy, settings)
    table = await connect_targets(settings, handles)
    metrics = ServingMetrics(table.pairs)
    hooks = []
    if _flag("EQUISERVE_CAMPAIGNS", default=True):
        from services.scheduler.ray_backend import campaign_service

        # the campaign scheduler actor (issue 5), served from this same server
        hooks.append(
            await asyncio.to_thread(campaign_service, settings, None, metrics.registry)
        )
    gateway = build_server(
        settings,
        table,
        extra_servicers=hooks,
        metrics=metrics,
        replica_counter=lambda: replica_counts(settings),
    )
    await gateway.start()
    logger.info(
        "serving %s on %s:%d, metrics on http://%s:%s/metrics",
        [f"{m}/{b}" for m, b in table.pairs],
        settings.grpc_address.rsplit(":", 1)[0],
        gateway.port,
        settings.metrics_host,
        gateway.metrics_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (local)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    # EQUISERVE_ATTACH=true: a RayService deploys the applications; only attach
    attach_only = _flag("EQUISERVE_ATTACH", default=False)
    started = start_ray(args.num_cpus, attach_only)
    try:
        asyncio.run(run(settings, attach_only))
    finally:
        if started:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
