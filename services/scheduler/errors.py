"""Errors of the campaign path, each with the gRPC status it maps to.

The campaign servicer maps them in one place (:func:`status_for`). A campaign of
another tenant is reported as NOT_FOUND, exactly like an id that does not exist, so
that ids leak nothing about other tenants' work.
"""

from __future__ import annotations

import logging

import grpc

logger = logging.getLogger(__name__)


class CampaignError(Exception):
    """An error whose gRPC status is known where it is raised."""

    code = grpc.StatusCode.INTERNAL


class CampaignNotFoundError(CampaignError):
    """No such campaign for this tenant (it may belong to another)."""

    code = grpc.StatusCode.NOT_FOUND

    @classmethod
    def for_id(cls, campaign_id: str) -> CampaignNotFoundError:
        """The error for ``campaign_id`` (one message argument: Ray can rebuild it)."""
        return cls(
            f"no campaign {campaign_id!r} for this API key; ListCampaigns shows yours"
        )


class InvalidCampaignRequestError(CampaignError):
    """Bad input: a limit exceeded, a malformed structure, a path outside the roots."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class CampaignStateError(CampaignError):
    """The request does not fit the campaign's state (appending to a sealed one)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class SchedulerUnavailableError(CampaignError):
    """The scheduler cannot be reached right now (restarting); retry."""

    code = grpc.StatusCode.UNAVAILABLE


def status_for(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message for an exception raised by a campaign RPC."""
    from models.registry import UnknownBackendError, UnknownModelError

    if isinstance(err, CampaignError):
        return err.code, str(err)
    if isinstance(err, UnknownModelError | UnknownBackendError):
        return grpc.StatusCode.NOT_FOUND, f"{err}; ListModels shows the models"
    logger.error("internal error in a campaign call", exc_info=err)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(err).__name__}); see logs"
