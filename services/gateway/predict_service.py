"""PredictService: validate, admit, split by atoms, call the replicas, record.

Each RPC follows the same steps: pick the target (model, backend), validate every
structure by the model library's rules (INVALID_ARGUMENT names the index and
reason), admit it against the target's in-flight bound, split it into chunks of at
most one batch budget (so several replicas can share a large request), call the
replicas with the caller's deadline, and record the metrics. Errors go through
:func:`services.gateway.errors.status_for`, the one place that maps them to codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from equiserve.v1 import predict_pb2, predict_pb2_grpc, structure_pb2

from models.structure import InvalidStructureError, Structure, validate_structure
from services.deployments.batching import ItemResult
from services.deployments.replica import ReplicaRequest
from services.gateway.convert import (
    Wanted,
    result_to_proto,
    structure_from_proto,
    wanted_properties,
)
from services.gateway.errors import InvalidRequestError, ShuttingDownError, status_for
from services.gateway.targets import Target, TargetTable
from services.metrics import UNKNOWN, ServingMetrics

logger = logging.getLogger(__name__)

# Above this many atoms a request is validated in a worker thread, so that one
# large request does not stall every other RPC on the event loop.
INLINE_VALIDATION_ATOMS = 2000
# Errors listed in one INVALID_ARGUMENT message.
MAX_LISTED_ERRORS = 5
# Our own timeout fires this much before the caller's deadline, s.
DEADLINE_MARGIN_S = 0.002


@dataclass(frozen=True)
class _Work:
    target: Target
    structures: list[Structure]
    wanted: Wanted


class PredictServicer(predict_pb2_grpc.PredictServiceServicer):
    """The PredictService RPCs.

    Args:
        table: the served targets.
        metrics: where measurements go.
        max_structures: structures accepted in one request.
        draining: returns True once the gateway is shutting down.
    """

    def __init__(
        self,
        table: TargetTable,
        metrics: ServingMetrics,
        max_structures: int,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.table = table
        self.metrics = metrics
        self.max_structures = max_structures
        self._draining = draining

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        started = time.monotonic()
        labels = (request.model, request.backend)
        try:
            work = await self._prepare(request)
            labels = (work.target.model, work.target.backend)
            with self._in_flight(work):
                values = await self._run_unary(work, context.time_remaining())
            response = predict_pb2.PredictResponse(
                model=work.target.model,
                backend=work.target.backend,
                model_version=work.target.info.version,
            )
            for i, (s, value) in enumerate(zip(work.structures, values)):
                response.results.append(
                    result_to_proto(i, s.label or "", value, work.wanted)
                )
        except Exception as err:
            await self._abort(context, labels, "Predict", started, err)
        self.metrics.observe_request(*labels, "Predict", time.monotonic() - started)
        return response

    async def PredictStream(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[structure_pb2.StructureResult]:
        started = time.monotonic()
        labels = (request.model, request.backend)
        try:
            work = await self._prepare(request)
            labels = (work.target.model, work.target.backend)
            with self._in_flight(work):
                stream = self._run_stream(work, context.time_remaining())
                async for i, value in stream:
                    label = work.structures[i].label or ""
                    yield result_to_proto(i, label, value, work.wanted)
        except Exception as err:
            await self._abort(context, labels, "PredictStream", started, err)
        self.metrics.observe_request(
            *labels, "PredictStream", time.monotonic() - started
        )

    async def ListModels(
        self, request: predict_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.ListModelsResponse:
        started = time.monotonic()
        response = self.table.list_models()
        # not about one model: recorded with model = backend = "unknown"
        self.metrics.observe_request(
            UNKNOWN, UNKNOWN, "ListModels", time.monotonic() - started
        )
        return response

    # -- steps -----------------------------------------------------------------

    async def _prepare(self, request: predict_pb2.PredictRequest) -> _Work:
        """Target, properties and validated structures of a request."""
        if self._draining():
            raise ShuttingDownError("the gateway is shutting down; retry elsewhere")
        target = self.table.resolve(request.model, request.backend)
        wanted = wanted_properties(request.properties)
        n = len(request.structures)
        if n == 0 or n > self.max_structures:
            raise InvalidRequestError(
                f"a request holds 1 to {self.max_structures} structures, got {n}; "
                "split it, or submit a campaign for large sets"
            )
        atoms = sum(len(s.atomic_numbers) for s in request.structures)
        if atoms > INLINE_VALIDATION_ATOMS:
            structures = await asyncio.to_thread(self._validate, request, target)
        else:
            structures = self._validate(request, target)
        return _Work(target, structures, wanted)

    def _validate(
        self, request: predict_pb2.PredictRequest, target: Target
    ) -> list[Structure]:
        structures, errors = [], []
        elements = target.info.spec.elements
        for i, msg in enumerate(request.structures):
            try:
                s = structure_from_proto(msg, i)
                validate_structure(s, elements, target.info.limits, i)
                structures.append(s)
            except InvalidStructureError as err:
                errors.append(err)
        if errors:
            listed = "; ".join(
                f"{err} (reason: {err.reason})" for err in errors[:MAX_LISTED_ERRORS]
            )
            more = len(errors) - MAX_LISTED_ERRORS
            raise InvalidRequestError(
                f"{len(errors)} invalid structure(s): {listed}"
                + (f"; and {more} more" if more > 0 else "")
            )
        return structures

    def _chunks(self, work: _Work) -> list[tuple[int, list[Structure]]]:
        """``(offset, structures)`` chunks of at most one batch budget of atoms."""
        budget = max(1, work.target.info.batch_max_atoms)
        chunks: list[tuple[int, list[Structure]]] = []
        start, atoms = 0, 0
        for i, s in enumerate(work.structures):
            if i > start and atoms + s.n_atoms > budget:
                chunks.append((start, work.structures[start:i]))
                start, atoms = i, 0
            atoms += s.n_atoms
        chunks.append((start, work.structures[start:]))
        return chunks

    async def _run_unary(self, work: _Work, timeout: float | None) -> list[Any]:
        deadline = None if timeout is None else time.time() + timeout
        requests = [
            ReplicaRequest(chunk, work.wanted.stress, deadline)
            for _, chunk in self._chunks(work)
        ]
        responses = [work.target.handle.predict.remote(r) for r in requests]
        items: list[ItemResult] = []
        try:
            async with asyncio.timeout(_margin(timeout)):
                for response in responses:
                    items.extend(await response)
        except BaseException:
            for response in responses:
                response.cancel()
            raise
        for s, item in zip(work.structures, items):
            self._record(work.target, s, item)
        return [item.value for item in items]

    async def _run_stream(
        self, work: _Work, timeout: float | None
    ) -> AsyncIterator[tuple[int, Any]]:
        deadline = None if timeout is None else time.time() + timeout
        queue: asyncio.Queue[tuple[int, ItemResult] | BaseException | None] = (
            asyncio.Queue()
        )
        chunks = self._chunks(work)
        handle = work.target.handle.options(stream=True)

        async def pump(offset: int, chunk: list[Structure]) -> None:
            request = ReplicaRequest(chunk, work.wanted.stress, deadline)
            try:
                async for position, item in handle.predict_stream.remote(request):
                    await queue.put((offset + position, item))
            except Exception as err:
                await queue.put(err)
            await queue.put(None)

        pumps = [asyncio.create_task(pump(o, c)) for o, c in chunks]
        try:
            async with asyncio.timeout(_margin(timeout)):
                finished = 0
                while finished < len(pumps):
                    got = await queue.get()
                    if got is None:
                        finished += 1
                        continue
                    if isinstance(got, BaseException):
                        raise got
                    index, item = got
                    self._record(work.target, work.structures[index], item)
                    yield index, item.value
        finally:
            for task in pumps:
                task.cancel()

    # -- bookkeeping -----------------------------------------------------------

    def _record(self, target: Target, structure: Structure, item: ItemResult) -> None:
        m, b = target.model, target.backend
        self.metrics.observe_structure(m, b, structure.n_atoms, item.queue_wait_s)
        if item.batch is not None:
            self.metrics.observe_batch(m, b, item.batch)

    @contextlib.contextmanager
    def _in_flight(self, work: _Work) -> Iterator[None]:
        gauge = self.metrics.in_flight.labels(
            *self.metrics.labels(work.target.model, work.target.backend)
        )
        with work.target.admit(len(work.structures)):
            gauge.inc()
            try:
                yield
            finally:
                gauge.dec()

    async def _abort(
        self,
        context: grpc.aio.ServicerContext,
        labels: tuple[str, str],
        method: str,
        started: float,
        err: Exception,
    ) -> NoReturn:
        code, message = status_for(err)
        self.metrics.observe_error(*labels, code)
        self.metrics.observe_request(*labels, method, time.monotonic() - started)
        logger.info("%s %s/%s -> %s: %s", method, *labels, code.name, message)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # unreachable


def _margin(timeout: float | None) -> float | None:
    return None if timeout is None else max(0.0, timeout - DEADLINE_MARGIN_S)
