"""Fake equiserve gRPC services on 127.0.0.1 for the load generator's tests.

The fakes implement the real generated service interfaces (PredictService,
CampaignService) with trivial results, so the tests exercise the load generator's
real gRPC path without Ray or a model. No asyncio plugin is needed: a test calls
``asyncio.run(serve_and_run(fake, coroutine_function))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from equiserve.v1 import (
    campaigns_pb2,
    campaigns_pb2_grpc,
    predict_pb2,
    predict_pb2_grpc,
    structure_pb2,
)

GOOD_KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


@dataclass
class FakePredict(predict_pb2_grpc.PredictServiceServicer):
    """Answers Predict after ``delay_s``; every ``fail_every``-th call is refused."""

    delay_s: float = 0.0
    fail_every: int = 0
    calls: int = 0
    tenants: list[str] = field(default_factory=list)

    async def Predict(self, request: Any, context: Any) -> Any:
        key = dict(context.invocation_metadata()).get("x-api-key")
        if key not in GOOD_KEYS:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad key")
        self.calls += 1
        self.tenants.append(GOOD_KEYS[key])
        if self.fail_every and self.calls % self.fail_every == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        await asyncio.sleep(self.delay_s)
        return predict_pb2.PredictResponse(
            results=[
                structure_pb2.StructureResult(index=i, id=s.id, energy=-1.0)
                for i, s in enumerate(request.structures)
            ],
            model=request.model,
            backend=request.backend or "fused",
        )


@dataclass
class FakeCampaigns(campaigns_pb2_grpc.CampaignServiceServicer):
    """A campaign that completes ``per_poll`` structures each time it is polled."""

    per_poll: int = 400
    total: int = 0
    done: int = 0
    appended_first: list[int] = field(default_factory=list)

    async def SubmitCampaign(self, request: Any, context: Any) -> Any:
        return campaigns_pb2.Campaign(id="c1", name=request.name, model=request.model)

    async def AppendStructures(self, request: Any, context: Any) -> Any:
        self.appended_first.append(request.first_index)
        self.total += len(request.structures)
        return campaigns_pb2.AppendStructuresResponse(total=self.total)

    async def GetCampaign(self, request: Any, context: Any) -> Any:
        self.done = min(self.total, self.done + self.per_poll)
        state = (
            campaigns_pb2.CAMPAIGN_STATE_COMPLETED
            if self.done == self.total
            else campaigns_pb2.CAMPAIGN_STATE_RUNNING
        )
        return campaigns_pb2.Campaign(
            id="c1", state=state, total=self.total, succeeded=self.done
        )

    async def CancelCampaign(self, request: Any, context: Any) -> Any:
        return campaigns_pb2.Campaign(
            id="c1",
            state=campaigns_pb2.CAMPAIGN_STATE_CANCELLED,
            total=self.total,
            succeeded=self.done,
        )


async def serve_and_run(
    predict: FakePredict | None,
    campaigns: FakeCampaigns | None,
    body: Callable[[str], Awaitable[Any]],
) -> Any:
    """Start the fakes on 127.0.0.1:0, await ``body(target)``, stop the server."""
    server = grpc.aio.server()
    if predict is not None:
        predict_pb2_grpc.add_PredictServiceServicer_to_server(predict, server)
    if campaigns is not None:
        campaigns_pb2_grpc.add_CampaignServiceServicer_to_server(campaigns, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await body(f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)
