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
    config: DeploymentConfig,
    options: ReplicaOptions,
    max_atoms_per_structure: int,
    set_replicas: bool = True,
) -> Any:
    """The Serve application for one (model, backend), not yet running.

    Args:
        config: the (model, backend); names the application and its deployment.
        options: replica resources, threads and batching.
        max_atoms_per_structure: per-structure atom limit.
        set_replicas: pass ``num_replicas``; off when a Serve config file scales
            the deployment (``autoscaling_config`` excludes it).
    """
    from ray import serve

    from services.deployments.replica import ModelReplica

    wants_gpu = options.device == "cuda" or (
        options.device == "auto" and _cluster_has_gpu()
    )
    base: Any = serve.deployment(ModelReplica)
    replicas = {"num_replicas": options.num_replicas} if set_replicas else {}
    deployment = base.options(
        name=config.app_name,
        **replicas,
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


def app_builder(args: dict[str, Any]) -> Any:
    """Serve config entry point (``import_path: services.deployments.app:app_builder``).

    Used by the RayService's ``serveConfigV2``: one application per (model, backend),
    named :attr:`DeploymentConfig.app_name`. The replica count comes from the
    config's ``num_replicas`` or ``autoscaling_config``, not from here.

    Args:
        args: ``model`` and ``backend`` (required); optional ``device``,
            ``dtype``, ``num_cpus``, ``torch_threads``, ``batch_max_atoms``,
            ``batch_max_edges``, ``batch_max_wait_ms``, ``max_queued_atoms``,
            ``max_atoms_per_structure``, ``model_loader``.

    Raises:
        ValueError: when ``model`` or ``backend`` is missing or a key is unknown.
    """
    known = {"model", "backend", "device", "dtype", "num_cpus", "torch_threads",
             "batch_max_atoms", "batch_max_edges", "batch_max_wait_ms",
             "max_queued_atoms", "max_atoms_per_structure", "model_loader"}  # fmt: skip
    unknown = sorted(set(args) - known)
    if unknown or "model" not in args or "backend" not in args:
        raise ValueError(
            f"app_builder args need model and backend and accept {sorted(known)}; "
            f"got {sorted(args)}"
        )
    num_cpus = float(args.get("num_cpus", 1.0))
    defaults = ReplicaOptions()
    options = ReplicaOptions(
        num_cpus=num_cpus,
        torch_threads=int(args.get("torch_threads", max(1, round(num_cpus)))),
        device=str(args.get("device", defaults.device)),
        dtype=str(args.get("dtype", defaults.dtype)),
        batch_max_atoms=int(args.get("batch_max_atoms", 0)),
        batch_max_edges=int(args.get("batch_max_edges", 0)),
        batch_max_wait_s=float(args.get("batch_max_wait_ms", 2.0)) / 1000,
        max_queued_atoms=int(args.get("max_queued_atoms", defaults.max_queued_atoms)),
        model_loader=str(args.get("model_loader", defaults.model_loader)),
    )
    config = DeploymentConfig(str(args["model"]), str(args["backend"]))
    max_atoms = int(args.get("max_atoms_per_structure", 10_000))
    return build_app(config, options, max_atoms, set_replicas=False)


def attach(settings: Settings) -> dict[tuple[str, str], Any]:
    """Handles to applications deployed by someone else (a RayService config).

    Returns:
        ``(model, backend)`` -> Serve ``DeploymentHandle``.
    """
    from ray import serve

    return {
        config.key: serve.get_app_handle(config.app_name)
        for config in settings.deployments
    }


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

    if not ray.is_initialized():  # building an app outside Ray (tests, tooling)
        return False
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
