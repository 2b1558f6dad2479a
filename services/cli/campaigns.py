"""A blocking client of CampaignService, used by the ``equiserve`` command.

Uploads are chunked and resumable: each chunk carries the index of its first
structure, so a chunk resent after a lost reply is acknowledged, not stored twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from equiserve.v1 import campaigns_pb2, campaigns_pb2_grpc, structure_pb2

from services.client.client import API_KEY_METADATA, structure_message

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 500
# Transient statuses on which one upload chunk is resent, and how often.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
UPLOAD_RETRIES = 5
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

TASKS = {
    "single_point": campaigns_pb2.TASK_SINGLE_POINT,
    "relax": campaigns_pb2.TASK_RELAX,
}
STATE_NAMES = {
    value: name.removeprefix("CAMPAIGN_STATE_").lower()
    for name, value in campaigns_pb2.CampaignState.items()
}
ACTIVE = {campaigns_pb2.CAMPAIGN_STATE_OPEN, campaigns_pb2.CAMPAIGN_STATE_RUNNING}


@dataclass(frozen=True)
class RelaxOptions:
    """Relaxation parameters; ``None`` keeps the server's default."""

    fmax: float | None = None
    max_steps: int | None = None
    relax_cell: bool = False
    pressure: float = 0.0

    def message(self) -> campaigns_pb2.RelaxParameters:
        """The ``RelaxParameters`` message (0 means the server's default)."""
        return campaigns_pb2.RelaxParameters(
            fmax=self.fmax or 0.0,
            max_steps=self.max_steps or 0,
            relax_cell=self.relax_cell,
            pressure=self.pressure,
        )


class CampaignClient:
    """CampaignService over one channel.

    Args:
        address: ``host:port`` of the gateway.
        api_key: sent as ``x-api-key`` metadata.
        timeout: per-call deadline for unary calls, s.
    """

    def __init__(self, address: str, api_key: str = "", timeout: float = 60.0) -> None:
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = campaigns_pb2_grpc.CampaignServiceStub(self._channel)
        self.metadata = ((API_KEY_METADATA, api_key),) if api_key else ()
        self.timeout = timeout

    def __enter__(self) -> CampaignClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def submit(
        self,
        name: str,
        model: str,
        backend: str = "",
        task: str = "single_point",
        relax: RelaxOptions | None = None,
        priority: int = 0,
        source: str = "",
    ) -> campaigns_pb2.Campaign:
        """Create a campaign (structures follow with :meth:`upload`, or ``source``)."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        request = campaigns_pb2.SubmitCampaignRequest(
            name=name, model=model, backend=backend, task=TASKS[task],
            relax=(relax or RelaxOptions()).message(), priority=priority,
        )  # fmt: skip
        if source:
            request.source.path = source
        return self.stub.SubmitCampaign(
            request, timeout=self.timeout, metadata=self.metadata
        )

    def upload(
        self,
        campaign_id: str,
        structures: Iterable[Any],
        chunk_size: int = DEFAULT_CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Append structures (``Atoms`` or ``Structure``) in chunks, then seal.

        Returns:
            Structures stored.
        """
        sent = 0
        chunk: list[structure_pb2.Structure] = []
        for item in structures:
            label = getattr(item, "info", {}).get("id")
            chunk.append(structure_message(item, label))
            if len(chunk) == chunk_size:
                sent = self._append(campaign_id, sent, chunk, last=False)
                if progress:
                    progress(len(chunk))
                chunk = []
        total = self._append(campaign_id, sent, chunk, last=True)
        if progress and chunk:
            progress(len(chunk))
        return total

    def _append(
        self, campaign_id: str, first: int, chunk: list[Any], last: bool
    ) -> int:
        request = campaigns_pb2.AppendStructuresRequest(
            campaign_id=campaign_id, structures=chunk, first_index=first, last=last
        )
        for attempt in range(UPLOAD_RETRIES + 1):
            try:
                reply = self.stub.AppendStructures(
                    request, timeout=self.timeout, metadata=self.metadata
                )
                return int(reply.total)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt == UPLOAD_RETRIES:
                    raise
                logger.warning("append failed (%s); resending", err.code().name)
                time.sleep(min(2.0**attempt, 10.0))
        raise AssertionError("unreachable")

    def get(self, campaign_id: str) -> campaigns_pb2.Campaign:
        """State, counts, throughput and ETA of one campaign."""
        return self.stub.GetCampaign(
            campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def list(self, limit: int = 100) -> list[campaigns_pb2.Campaign]:
        """The caller's campaigns, newest first."""
        reply = self.stub.ListCampaigns(
            campaigns_pb2.ListCampaignsRequest(limit=limit),
            timeout=self.timeout,
            metadata=self.metadata,
        )
        return list(reply.campaigns)

    def cancel(self, campaign_id: str) -> campaigns_pb2.Campaign:
        """Stop a campaign; its written results stay readable."""
        return self.stub.CancelCampaign(
            campaigns_pb2.CancelCampaignRequest(campaign_id=campaign_id),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def stream(
        self, campaign_id: str, offset: int = 0, follow: bool = False
    ) -> Iterator[campaigns_pb2.CampaignResult]:
        """Results in completion order from ``offset``; resumes after a broken
        stream from the last offset received."""
        while True:
            request = campaigns_pb2.StreamResultsRequest(
                campaign_id=campaign_id, offset=offset, follow=follow
            )
            try:
                for result in self.stub.StreamResults(request, metadata=self.metadata):
                    offset = int(result.offset) + 1
                    yield result
                return
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE:
                    raise
                logger.warning("stream broke at offset %d; resuming", offset)
                time.sleep(1.0)

    def fetch(self, campaign_id: str) -> pa.Table:
        """Every finished result as one table (columns as in ``ResultShard``)."""
        request = campaigns_pb2.FetchResultsRequest(campaign_id=campaign_id)
        tables = [
            pq.read_table(pa.BufferReader(shard.parquet))
            for shard in self.stub.FetchResults(request, metadata=self.metadata)
        ]
        if not tables:
            from services.scheduler.shards import RESULT_SCHEMA

            return RESULT_SCHEMA.empty_table()
        return pa.concat_tables(tables).sort_by("index")
