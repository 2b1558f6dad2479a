"""The scheduler on Ray: a detached actor that computes through Serve replicas.

* :class:`ServeExecutor` sends work units to the model deployments of
  :mod:`services.deployments` (one Serve application per (model, backend)). A
  single point is one ``predict`` call. A relaxation runs batched FIRE here, in a
  worker thread of the scheduler actor, and calls the replica for energies, forces
  and stresses at every step (the replica batches these calls with everyone
  else's).
* :class:`SchedulerActor` holds a :class:`~services.scheduler.scheduler.Scheduler`.
  It is a named, detached actor with unlimited restarts: if its process dies Ray
  starts a new one, which requeues the units that were in flight and resumes
  (the store is the state). A gateway that restarts finds it by name.
* :class:`ActorBackend` is what the gateway's servicer calls: the same methods,
  each a call on the actor.

TODO: FIRE's state lives on the scheduler's CPU, not on the model's device; on a
GPU deployment each step copies positions and forces across. A ``relax`` method on
``ModelReplica`` (calling :func:`models.relax.relax` with the replica's model)
would keep it on the device; it belongs to the deployment code.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from models.relax import relax
from models.structure import InvalidStructureError, Structure
from services.scheduler import store
from services.scheduler.errors import CampaignNotFoundError, SchedulerUnavailableError
from services.scheduler.executors import SINGLE_POINT, StandInExecutor, WorkSpec
from services.scheduler.metrics import CampaignCollector
from services.scheduler.scheduler import CampaignView, Scheduler, SchedulerConfig
from services.scheduler.servicer import add_campaign_service
from services.scheduler.shards import Outcome

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from services.config import Settings

logger = logging.getLogger(__name__)

ACTOR_NAME = "equiserve-scheduler"
NAMESPACE = "equiserve"
# Seconds to wait for a Serve response to one FIRE step before calling it failed.
STEP_TIMEOUT_S = 600.0
# Seconds a metrics scrape waits for the scheduler's totals.
METRICS_TIMEOUT_S = 5.0


class ServeExecutor:
    """Work units computed by Serve deployments, looked up by application name.

    Args:
        apps: ``(model, backend)`` -> Serve application name. A campaign with an
            empty backend uses the first application serving its model.
    """

    def __init__(self, apps: Mapping[tuple[str, str], str]) -> None:
        self.apps = dict(apps)
        self._handles: dict[str, Any] = {}

    def serves(self, model: str, backend: str) -> bool:
        """Whether a deployment serves ``model`` (with ``backend``, if given)."""
        return any(m == model and backend in ("", b) for m, b in self.apps)

    def _handle(self, spec: WorkSpec) -> Any:
        from ray import serve

        for (model, backend), app in self.apps.items():
            if model == spec.model and spec.backend in ("", backend):
                if app not in self._handles:
                    self._handles[app] = serve.get_app_handle(app)
                return self._handles[app]
        raise RuntimeError(f"no deployment serves {spec.model}/{spec.backend}")

    async def __call__(
        self, spec: WorkSpec, structures: list[Structure]
    ) -> list[Outcome | InvalidStructureError]:
        handle = self._handle(spec)
        if spec.task == SINGLE_POINT:
            values = await _predict(handle, structures, True)
            return [
                v
                if isinstance(v, InvalidStructureError)
                else Outcome(s, float(v.energy), v.forces, v.stress)
                for s, v in zip(structures, values)
            ]
        predictor = _BlockingPredictor(handle)
        results = await asyncio.to_thread(
            relax, structures, predictor, spec.relax_settings()
        )
        return [
            r
            if isinstance(r, InvalidStructureError)
            else Outcome(
                r.structure, r.energy, r.forces, r.stress, r.steps, r.converged
            )
            for r in results
        ]


async def _predict(handle: Any, structures: list[Structure], stress: bool) -> list[Any]:
    from services.deployments.replica import ReplicaRequest

    items = await handle.predict.remote(ReplicaRequest(structures, stress))
    return [item.value for item in items]


class _BlockingPredictor:
    """The model library's ``predict`` contract over a Serve handle (worker thread)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def predict(
        self, structures: Sequence[Structure], compute_stress: bool = True
    ) -> list[Any]:
        from services.deployments.replica import ReplicaRequest

        request = ReplicaRequest(list(structures), compute_stress)
        items = self.handle.predict.remote(request).result(timeout_s=STEP_TIMEOUT_S)
        return [item.value for item in items]


class SchedulerActor:
    """The scheduler as a Ray actor (wrap with ``ray.remote``; see :func:`launch`).

    Args:
        config: scheduler settings.
        apps: ``(model, backend)`` -> Serve application; empty with ``stand_in``.
        stand_in: compute nothing (the labelled stand-in model; benchmarks).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        apps: Mapping[tuple[str, str], str],
        stand_in: bool = False,
    ) -> None:
        import ray

        logging.basicConfig(level=logging.INFO)
        executor = StandInExecutor() if stand_in else ServeExecutor(apps)
        self.scheduler = Scheduler(config, executor)
        self._started: asyncio.Task[None] | None = None
        # a restarted actor resumes at once, not at the first client call: ask
        # ourselves to start (the call runs once the constructor has returned)
        me = ray.get_runtime_context().current_actor
        threading.Thread(target=me.ping.remote, daemon=True).start()

    async def _ready(self) -> Scheduler:
        if self._started is None:
            self._started = asyncio.ensure_future(self.scheduler.start())
        await self._started
        return self.scheduler

    async def ping(self) -> bool:
        await self._ready()
        return True

    async def submit(self, *args: Any, **kwargs: Any) -> store.CampaignRecord:
        return await (await self._ready()).submit(*args, **kwargs)

    async def append(self, *args: Any) -> int:
        return await (await self._ready()).append(*args)

    async def get(self, tenant: str, campaign_id: str) -> CampaignView:
        return await (await self._ready()).get(tenant, campaign_id)

    async def list_campaigns(self, tenant: str, limit: int = 100) -> list[CampaignView]:
        return await (await self._ready()).list_campaigns(tenant, limit)

    async def cancel(self, tenant: str, campaign_id: str) -> CampaignView:
        return await (await self._ready()).cancel(tenant, campaign_id)

    async def shards(self, *args: Any) -> list[tuple[store.ShardRecord, bytes]]:
        return await (await self._ready()).shards(*args)

    async def shard_at_offset(self, tenant: str, campaign_id: str, offset: int) -> int:
        return await (await self._ready()).shard_at_offset(tenant, campaign_id, offset)

    async def totals(self) -> list[tuple[str, int, int, int, int]]:
        scheduler = await self._ready()
        return await asyncio.to_thread(scheduler.totals)


def launch(
    config: SchedulerConfig,
    apps: Mapping[tuple[str, str], str],
    stand_in: bool = False,
    name: str = ACTOR_NAME,
) -> Any:
    """The named scheduler actor: the running one, or a new detached one.

    Needs a connected Ray. The actor asks for no CPU (it mostly waits on I/O and
    replicas) and restarts without limit; calls are not retried automatically
    (the client retries what is idempotent).
    """
    import ray

    remote: Any = ray.remote(SchedulerActor).options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=64,
    )  # fmt: skip
    actor = remote.remote(config, dict(apps), stand_in)
    ray.get(actor.ping.remote())
    return actor


def check_served(apps: Mapping[tuple[str, str], str]) -> Callable[[str, str], None]:
    """A model check for the servicer: only what a deployment serves is accepted."""

    def check(model: str, backend: str) -> None:
        if not any(m == model and backend in ("", b) for m, b in apps):
            served = ", ".join(f"{m}/{b}" for m, b in apps) or "nothing"
            raise CampaignNotFoundError(
                f"no deployment serves {model}/{backend or '(default)'}; this "
                f"gateway serves {served} (ListModels shows them)"
            )

    return check


def campaign_service(
    settings: Settings,
    config: SchedulerConfig | None = None,
    registry: CollectorRegistry | None = None,
) -> Callable[[Any], str]:
    """The gateway hook serving campaigns: ``build_server(extra_servicers=[...])``.

    Launches (or finds, after a gateway restart) the scheduler actor for the
    configured deployments. Needs a connected Ray with the deployments running.

    Args:
        settings: the gateway's settings (its deployments).
        config: scheduler settings; default :meth:`SchedulerConfig.from_env`.
        registry: the gateway's metrics registry (``gateway.metrics.registry``, or
            a ``ServingMetrics`` passed to ``build_server``); the campaign metrics
            are added to it.
    """
    config = config or SchedulerConfig.from_env()
    apps = {d.key: d.app_name for d in settings.deployments}
    backend = ActorBackend(launch(config, apps))
    if registry is not None:
        registry.register(CampaignCollector(backend.totals))
    return add_campaign_service(backend, check_model=check_served(apps))


class ActorBackend:
    """The servicer's backend calls, sent to the scheduler actor.

    An exception raised inside the actor comes back as itself (not wrapped in
    Ray's ``RayTaskError``), so the servicer maps it to the same status as
    in-process; an actor that is down or restarting raises
    :class:`SchedulerUnavailableError` (UNAVAILABLE: retry).
    """

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def _call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return await getattr(self.actor, method).remote(*args)
        except RayTaskError as err:
            cause = err.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except RayActorError as err:
            raise SchedulerUnavailableError(
                "the campaign scheduler is restarting; retry in a few seconds"
            ) from err

    async def submit(
        self,
        tenant: str,
        name: str,
        spec: WorkSpec,
        priority: int = 0,
        source: tuple[str, str] | None = None,
    ) -> store.CampaignRecord:
        return await self._call("submit", tenant, name, spec, priority, source)

    async def append(
        self,
        tenant: str,
        campaign_id: str,
        first_index: int,
        structures: Sequence[Structure],
        last: bool,
    ) -> int:
        return await self._call(
            "append", tenant, campaign_id, first_index, list(structures), last
        )

    async def get(self, tenant: str, campaign_id: str) -> CampaignView:
        return await self._call("get", tenant, campaign_id)

    async def list_campaigns(self, tenant: str, limit: int = 100) -> list[CampaignView]:
        return await self._call("list_campaigns", tenant, limit)

    async def cancel(self, tenant: str, campaign_id: str) -> CampaignView:
        return await self._call("cancel", tenant, campaign_id)

    async def shards(
        self, tenant: str, campaign_id: str, from_seq: int = 0, limit: int = 16
    ) -> list[tuple[store.ShardRecord, bytes]]:
        return await self._call("shards", tenant, campaign_id, from_seq, limit)

    async def shard_at_offset(self, tenant: str, campaign_id: str, offset: int) -> int:
        return await self._call("shard_at_offset", tenant, campaign_id, offset)

    def totals(self) -> list[tuple[str, int, int, int, int]]:
        """Campaign totals for the metrics (blocking: called at scrape time)."""
        import ray

        return ray.get(self.actor.totals.remote(), timeout=METRICS_TIMEOUT_S)
