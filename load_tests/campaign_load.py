"""The ``campaign`` load scenario: submit a large campaign in chunks, watch it finish.

Measures what a user of the campaign API sees: upload time, time to the last result,
sustained structures/s, and the campaign's own progress over time. Bounded like every
scenario: when ``campaign_duration_s`` passes first, the campaign is cancelled and
the run reports how far it got.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc

from load_tests.loadgen import (
    API_KEY_METADATA,
    LoadConfig,
    _channel,
    silicon_cells,
)
from load_tests.stats import CallRecord

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
_FINAL_STATES = ("CAMPAIGN_STATE_COMPLETED", "CAMPAIGN_STATE_CANCELLED",
                 "CAMPAIGN_STATE_FAILED")  # fmt: skip


async def run_campaign(config: LoadConfig) -> tuple[list[CallRecord], float, dict]:
    """Submit ``campaign_structures`` single points, append them, poll to the end.

    Returns:
        The calls made (appends and polls), the wall time (s), and an ``extra``
        dict: campaign id, final state, counts, upload and completion times (s),
        structures/s from submission to the last result, and progress samples
        ``[[t_s, succeeded, failed], ...]``.
    """
    from equiserve.v1 import campaigns_pb2, campaigns_pb2_grpc

    tenant = config.tenants[0]
    metadata = ((API_KEY_METADATA, tenant.key),)
    cells = silicon_cells(64, config.atoms, config.seed)
    records: list[CallRecord] = []
    progress: list[list[float]] = []
    channel = _channel(config.target)
    stub = campaigns_pb2_grpc.CampaignServiceStub(channel)
    t0 = time.perf_counter()
    deadline = time.monotonic() + config.campaign_duration_s
    try:
        try:
            campaign = await stub.SubmitCampaign(
                campaigns_pb2.SubmitCampaignRequest(
                    name=f"loadtest-{int(time.time())}",
                    model=config.model,
                    backend=config.backend,
                    task=campaigns_pb2.TASK_SINGLE_POINT,
                ),
                metadata=metadata,
                timeout=config.call_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            # e.g. UNIMPLEMENTED: this gateway serves no CampaignService
            wall = time.perf_counter() - t0
            record = CallRecord(0.0, wall, err.code().name, 0, 0, "submit")
            return [record], wall, {"state": "not_run", "reason": err.details()}
        upload_s = await _upload(
            stub, campaign.id, cells, config, metadata, records, t0
        )
        final = await _watch(stub, campaign.id, metadata, deadline, progress, t0)
        if campaigns_pb2.CampaignState.Name(final.state) not in _FINAL_STATES:
            logger.warning("campaign %s not done by the deadline: cancel", campaign.id)
            final = await stub.CancelCampaign(
                campaigns_pb2.CancelCampaignRequest(campaign_id=campaign.id),
                metadata=metadata,
                timeout=config.call_timeout_s,
            )
    finally:
        await channel.close()
    wall = time.perf_counter() - t0
    done_s = progress[-1][0] if progress else wall
    extra: dict[str, Any] = {
        "campaign_id": campaign.id,
        "state": campaigns_pb2.CampaignState.Name(final.state),
        "total": int(final.total),
        "succeeded": int(final.succeeded),
        "failed": int(final.failed),
        "upload_s": round(upload_s, 3),
        "completion_s": round(done_s, 3),
        "campaign_structures_per_s": round(final.succeeded / max(done_s, 1e-9), 3),
        "progress": progress,
    }
    return records, wall, extra


async def _upload(
    stub: Any,
    campaign_id: str,
    cells: list[Any],
    config: LoadConfig,
    metadata: tuple[tuple[str, str], ...],
    records: list[CallRecord],
    t0: float,
) -> float:
    """Append the campaign's structures in chunks; the upload time, s."""
    from equiserve.v1 import campaigns_pb2

    start = time.perf_counter()
    total = config.campaign_structures
    for first in range(0, total, config.campaign_chunk):
        count = min(config.campaign_chunk, total - first)
        chunk = [cells[(first + k) % len(cells)] for k in range(count)]
        request = campaigns_pb2.AppendStructuresRequest(
            campaign_id=campaign_id,
            structures=chunk,
            first_index=first,
            last=first + count >= total,
        )
        call_start = time.perf_counter()
        code = "OK"
        try:
            await stub.AppendStructures(
                request, metadata=metadata, timeout=config.call_timeout_s
            )
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        atoms = sum(len(s.atomic_numbers) for s in chunk)
        # appended structures are not computed ones: count them as 0 structures
        records.append(
            CallRecord(
                call_start - t0,
                time.perf_counter() - call_start,
                code,
                0,
                atoms,
                "append",
            )
        )
        if code != "OK":
            raise RuntimeError(f"AppendStructures failed with {code} at {first}")
    return time.perf_counter() - start


async def _watch(
    stub: Any,
    campaign_id: str,
    metadata: tuple[tuple[str, str], ...],
    deadline: float,
    progress: list[list[float]],
    t0: float,
) -> Any:
    """Poll GetCampaign until a final state or the deadline; the last Campaign."""
    from equiserve.v1 import campaigns_pb2

    request = campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id)
    while True:
        campaign = await stub.GetCampaign(request, metadata=metadata, timeout=30.0)
        now = time.perf_counter() - t0
        progress.append([round(now, 3), int(campaign.succeeded), int(campaign.failed)])
        state = campaigns_pb2.CampaignState.Name(campaign.state)
        if state in _FINAL_STATES or time.monotonic() >= deadline:
            return campaign
        await asyncio.sleep(POLL_INTERVAL_S)
