"""Deploy one Ray Serve application per (model, backend) and hand back handles.

Each application holds one deployment of :class:`ModelReplica` with
``num_replicas`` replicas, ``num_cpus`` CPUs (and one GPU when the device is CUDA)
each. Serve's own request queue is bounded (``max_queued_requests``): beyond it a
call fails with ``BackPressureError``, which the gateway answers with
RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
from typing import Any

from services.config import DeploymentConfig, ReplicaOptions, Settings

logger = logging.getLogger(__name__)

# Requests one replica accepts at once; its batcher bounds the queued atoms.
MAX_ONGOING_REQUESTS = 256
# Requests Serve may queue in front of all replicas of a deployment.
MAX_QUEUED_REQUESTS = 1024
HEALTH_CHECK_PERIOD_S = 10.0


def build_app(
    config: DeploymentConfig, options: ReplicaOptions, max_atoms_per_structure: int
) -> Any:
    """The Serve application for one (model, backend), not yet running."""
    from ray import serve

    from services.deployments.replica import ModelReplica

    wants_gpu = options.device == "cuda" or (
        options.device == "auto" and _cluster_has_gpu()
    )
    base: Any = serve.deployment(ModelReplica)
    deployment = base.options(
        name=config.app_name,
        num_replicas=options.num_replicas,
        ray_actor_options={
            "num_cpus": options.num_cpus,
            "num_gpus": 1 if wants_gpu else 0,
        },
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        max_queued_requests=MAX_QUEUED_REQUESTS,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )
    return deployment.bind(
        config.model, config.backend, options, max_atoms_per_structure
    )


def deploy(settings: Settings) -> dict[tuple[str, str], Any]:
    """Run every configured deployment and wait until each is ready (warmed up).

    Needs a connected Ray with Serve started.

    Returns:
        ``(model, backend)`` -> Serve ``DeploymentHandle``.
    """
    from ray import serve

    handles: dict[tuple[str, str], Any] = {}
    for config in settings.deployments:
        app = build_app(config, settings.replica, settings.max_atoms_per_structure)
        logger.info("deploying %s", config.app_name)
        handles[config.key] = serve.run(app, name=config.app_name, route_prefix=None)
    return handles


def undeploy(settings: Settings) -> None:
    """Delete every configured application (the Serve instance stays)."""
    from ray import serve

    for config in settings.deployments:
        serve.delete(config.app_name)


def _cluster_has_gpu() -> bool:
    import ray

    return bool(ray.cluster_resources().get("GPU", 0))


def replica_counts(settings: Settings) -> dict[tuple[str, str], int]:
    """Running replicas per (model, backend), from Serve's controller.

    Blocking (one controller call); the gateway polls it from a worker thread.
    """
    from ray import serve

    applications = serve.status().applications
    counts: dict[tuple[str, str], int] = {}
    for config in settings.deployments:
        app = applications.get(config.app_name)
        deployment = app.deployments.get(config.app_name) if app else None
        states = deployment.replica_states if deployment else {}
        counts[config.key] = int(
            sum(n for state, n in states.items() if str(state).endswith("RUNNING"))
        )
    return counts
