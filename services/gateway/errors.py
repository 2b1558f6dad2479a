"""Every exception of the serving path mapped to a gRPC status, in one place.

Servicers raise :class:`GatewayError` subclasses (or let replica and Ray errors
through); :func:`status_for` turns any of them into a status code and a message,
and :func:`abort_with` records the error metric and aborts the RPC. Anything not
recognised is INTERNAL, with its traceback logged.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.deployments.batching import DeadlineExpiredError, QueueFullError

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """An error whose status code is known where it is raised."""

    code = grpc.StatusCode.INTERNAL


class InvalidRequestError(GatewayError):
    """Bad input: an invalid structure, too many structures, a bad property."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(GatewayError):
    """Unknown model or backend."""

    code = grpc.StatusCode.NOT_FOUND


class ApproximateBackendError(GatewayError):
    """Only an approximate backend could serve a request that did not name it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OverloadedError(GatewayError):
    """The deployment's bounded queue is full."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ShuttingDownError(GatewayError):
    """The gateway is draining."""

    code = grpc.StatusCode.UNAVAILABLE


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message for any exception raised while serving.

    Ray wraps a replica's exception in a ``RayTaskError`` that is also an instance
    of the original type, so replica errors are recognised by ``isinstance``.
    """
    if isinstance(err, GatewayError):
        return err.code, str(err)
    if isinstance(err, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, _first_line(err)
    if isinstance(err, DeadlineExpiredError | asyncio.TimeoutError | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before results"
    if _is_backpressure(err):
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the model's request queue is full; retry with backoff",
        )
    if _is_unavailable(err):
        logger.warning("replica unavailable: %s", _first_line(err))
        return (
            grpc.StatusCode.UNAVAILABLE,
            "the model's replicas are unavailable (restarting?); retry with backoff",
        )
    logger.error("internal error while serving", exc_info=err)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(err).__name__}); see logs"


def _is_backpressure(err: BaseException) -> bool:
    try:
        from ray.serve.exceptions import BackPressureError
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return isinstance(err, BackPressureError)


def _is_unavailable(err: BaseException) -> bool:
    try:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import DeploymentUnavailableError
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return isinstance(err, DeploymentUnavailableError | RayActorError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    # a RayTaskError's text starts with a banner; the original message comes last
    return text[-1] if text else type(err).__name__
