"""The CampaignService: gRPC in front of the scheduler, tenant by tenant.

The servicer holds no campaign state. It reads the caller's tenant from the
API-key interceptor, converts messages and calls a :class:`CampaignBackend`: the
in-process :class:`~services.scheduler.scheduler.Scheduler`, or
:class:`~services.scheduler.actor.ActorBackend` (the same calls on the scheduler's
Ray actor). A restarted gateway therefore loses nothing: clients reconnect and
resume their streams from an offset.

Every exception maps to a status in :func:`services.scheduler.errors.status_for`;
another tenant's campaign is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from equiserve.v1 import campaigns_pb2, campaigns_pb2_grpc, structure_pb2

from models.structure import InvalidStructureError, Structure
from services.gateway.auth import tenant_from_context
from services.gateway.convert import structure_from_proto
from services.scheduler import store
from services.scheduler.errors import InvalidCampaignRequestError, status_for
from services.scheduler.executors import RELAX, SINGLE_POINT, WorkSpec
from services.scheduler.scheduler import CampaignView

logger = logging.getLogger(__name__)

SERVICE_NAME = campaigns_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name
# How often a following stream looks for new results, s.
FOLLOW_POLL_S = 0.25
# Shards read per round trip while streaming.
SHARDS_PER_READ = 4

_TASKS = {
    campaigns_pb2.TASK_SINGLE_POINT: SINGLE_POINT,
    campaigns_pb2.TASK_RELAX: RELAX,
}
_TASK_ENUM = {v: k for k, v in _TASKS.items()}
_STATES = {
    store.OPEN: campaigns_pb2.CAMPAIGN_STATE_OPEN,
    store.RUNNING: campaigns_pb2.CAMPAIGN_STATE_RUNNING,
    store.COMPLETED: campaigns_pb2.CAMPAIGN_STATE_COMPLETED,
    store.CANCELLED: campaigns_pb2.CAMPAIGN_STATE_CANCELLED,
    store.FAILED: campaigns_pb2.CAMPAIGN_STATE_FAILED,
}


class CampaignBackend(Protocol):
    """The scheduler's calls, as the servicer uses them (see ``Scheduler``)."""

    async def submit(
        self,
        tenant: str,
        name: str,
        spec: WorkSpec,
        priority: int = 0,
        source: tuple[str, str] | None = None,
    ) -> store.CampaignRecord: ...

    async def append(
        self,
        tenant: str,
        campaign_id: str,
        first_index: int,
        structures: Sequence[Structure],
        last: bool,
    ) -> int: ...

    async def get(self, tenant: str, campaign_id: str) -> CampaignView: ...

    async def list_campaigns(
        self, tenant: str, limit: int = 100
    ) -> list[CampaignView]: ...

    async def cancel(self, tenant: str, campaign_id: str) -> CampaignView: ...

    async def shards(
        self, tenant: str, campaign_id: str, from_seq: int = 0, limit: int = 16
    ) -> list[tuple[store.ShardRecord, bytes]]: ...

    async def shard_at_offset(
        self, tenant: str, campaign_id: str, offset: int
    ) -> int: ...


def check_model_in_registry(model: str, backend: str) -> None:
    """Refuse an unknown model or backend (NOT_FOUND, naming ListModels)."""
    import models

    spec = models.get_spec(model)
    if backend:
        spec.backend_info(backend)


class CampaignServicer(campaigns_pb2_grpc.CampaignServiceServicer):
    """CampaignService on a gateway.

    Args:
        backend: the scheduler (in-process or its actor).
        check_model: raises for an unknown ``(model, backend)``.
    """

    def __init__(
        self,
        backend: CampaignBackend,
        check_model: Callable[[str, str], None] = check_model_in_registry,
    ) -> None:
        self.backend = backend
        self.check_model = check_model

    async def SubmitCampaign(
        self, request: campaigns_pb2.SubmitCampaignRequest, context: Any
    ) -> campaigns_pb2.Campaign:
        try:
            tenant = tenant_from_context(context)
            spec = _spec(request)
            self.check_model(spec.model, spec.backend)
            source = None
            if request.HasField("source") and request.source.path:
                source = (request.source.path, request.source.format)
            record = await self.backend.submit(
                tenant, request.name, spec, request.priority, source
            )
            return campaign_to_proto(CampaignView(record, 0, 0.0, -1.0))
        except Exception as err:
            await _abort(context, err)
            raise

    async def AppendStructures(
        self, request: campaigns_pb2.AppendStructuresRequest, context: Any
    ) -> campaigns_pb2.AppendStructuresResponse:
        try:
            tenant = tenant_from_context(context)
            first = int(request.first_index)
            structures = [
                structure_from_proto(msg, first + k)
                for k, msg in enumerate(request.structures)
            ]
            total = await self.backend.append(
                tenant, request.campaign_id, first, structures, request.last
            )
            return campaigns_pb2.AppendStructuresResponse(total=total)
        except Exception as err:
            await _abort(context, err)
            raise

    async def GetCampaign(
        self, request: campaigns_pb2.GetCampaignRequest, context: Any
    ) -> campaigns_pb2.Campaign:
        try:
            view = await self.backend.get(
                tenant_from_context(context), request.campaign_id
            )
            return campaign_to_proto(view)
        except Exception as err:
            await _abort(context, err)
            raise

    async def ListCampaigns(
        self, request: campaigns_pb2.ListCampaignsRequest, context: Any
    ) -> campaigns_pb2.ListCampaignsResponse:
        try:
            limit = int(request.limit) or 100
            views = await self.backend.list_campaigns(
                tenant_from_context(context), limit
            )
            return campaigns_pb2.ListCampaignsResponse(
                campaigns=[campaign_to_proto(v) for v in views]
            )
        except Exception as err:
            await _abort(context, err)
            raise

    async def CancelCampaign(
        self, request: campaigns_pb2.CancelCampaignRequest, context: Any
    ) -> campaigns_pb2.Campaign:
        try:
            view = await self.backend.cancel(
                tenant_from_context(context), request.campaign_id
            )
            return campaign_to_proto(view)
        except Exception as err:
            await _abort(context, err)
            raise

    async def StreamResults(
        self, request: campaigns_pb2.StreamResultsRequest, context: Any
    ) -> AsyncIterator[campaigns_pb2.CampaignResult]:
        try:
            tenant = tenant_from_context(context)
            cid, offset = request.campaign_id, int(request.offset)
            seq = await self.backend.shard_at_offset(tenant, cid, offset)
            while True:
                batch = await self.backend.shards(tenant, cid, seq, SHARDS_PER_READ)
                for record, data in batch:
                    for result in results_from_parquet(data, record.first_offset):
                        if result.offset >= offset:
                            yield result
                    seq, offset = record.seq + 1, record.first_offset + record.count
                if batch:
                    continue
                view = await self.backend.get(tenant, cid)
                ended = view.record.state not in store.ACTIVE_STATES
                if not request.follow or (ended and seq >= view.record.n_shards):
                    return
                await asyncio.sleep(FOLLOW_POLL_S)
        except Exception as err:
            await _abort(context, err)
            raise

    async def FetchResults(
        self, request: campaigns_pb2.FetchResultsRequest, context: Any
    ) -> AsyncIterator[campaigns_pb2.ResultShard]:
        try:
            tenant = tenant_from_context(context)
            seq = int(request.first_shard)
            while True:
                batch = await self.backend.shards(
                    tenant, request.campaign_id, seq, SHARDS_PER_READ
                )
                if not batch:
                    return
                for record, data in batch:
                    yield campaigns_pb2.ResultShard(
                        sequence=record.seq, count=record.count, parquet=data
                    )
                    seq = record.seq + 1
        except Exception as err:
            await _abort(context, err)
            raise


def add_campaign_service(
    backend: CampaignBackend, **kwargs: Any
) -> Callable[[Any], str]:
    """A gateway hook (``build_server(extra_servicers=[...])``) adding the service."""

    def hook(server: grpc.aio.Server) -> str:
        servicer = CampaignServicer(backend, **kwargs)
        campaigns_pb2_grpc.add_CampaignServiceServicer_to_server(servicer, server)
        return str(SERVICE_NAME)

    return hook


async def _abort(context: Any, err: BaseException) -> None:
    if isinstance(err, InvalidStructureError):
        err = InvalidCampaignRequestError(str(err))
    code, message = status_for(err)
    await context.abort(code, message)


def _spec(request: campaigns_pb2.SubmitCampaignRequest) -> WorkSpec:
    if request.task not in _TASKS:
        raise InvalidCampaignRequestError(
            f"task must be TASK_SINGLE_POINT or TASK_RELAX, got {request.task}"
        )
    if not request.model:
        raise InvalidCampaignRequestError("model is empty; ListModels shows the models")
    relax: dict[str, Any] = {}
    if request.HasField("relax"):
        r = request.relax
        relax = {"relax_cell": r.relax_cell, "pressure": r.pressure}
        if r.fmax:
            relax["fmax"] = r.fmax
        if r.max_steps:
            relax["max_steps"] = r.max_steps
    return WorkSpec(request.model, request.backend, _TASKS[request.task], relax)


def campaign_to_proto(view: CampaignView) -> campaigns_pb2.Campaign:
    """The message for a campaign and its live figures."""
    r = view.record
    relax = r.params.get("relax") or {}
    return campaigns_pb2.Campaign(
        id=r.id, name=r.name, model=r.model, backend=r.backend,
        task=_TASK_ENUM.get(r.task, campaigns_pb2.TASK_UNSPECIFIED),
        relax=campaigns_pb2.RelaxParameters(
            fmax=relax.get("fmax", 0.0), max_steps=relax.get("max_steps", 0),
            relax_cell=relax.get("relax_cell", False),
            pressure=relax.get("pressure", 0.0),
        ),
        priority=r.priority, state=_STATES[r.state], total=r.total,
        succeeded=r.succeeded, failed=r.failed, running=view.running,
        throughput=view.throughput, eta_seconds=view.eta_seconds,
        created_at=r.created, updated_at=r.updated, message=r.message,
    )  # fmt: skip


def results_from_parquet(
    data: bytes, first_offset: int
) -> list[campaigns_pb2.CampaignResult]:
    """The messages for one result shard, stream offsets from ``first_offset``."""
    table = pq.read_table(pa.BufferReader(data))
    out = []
    for k, row in enumerate(table.to_pylist()):
        result = structure_pb2.StructureResult(index=row["index"], id=row["id"])
        if row["error_reason"]:
            result.error.reason = row["error_reason"]
            result.error.message = row["error_message"]
        else:
            result.energy = row["energy"]
            result.forces.extend(row["forces"])
            result.stress.extend(row["stress"])
        structure = structure_pb2.Structure(
            atomic_numbers=row["numbers"], positions=row["positions"],
            cell=row["cell"], pbc=row["pbc"], id=row["id"],
        )  # fmt: skip
        out.append(
            campaigns_pb2.CampaignResult(
                result=result,
                structure=structure,
                steps=row["steps"],
                converged=row["converged"],
                offset=first_offset + k,
            )
        )
    return out
