"""Fixtures of the serving tests that need Ray: the SevenNet-0 deployment served on
the session's Ray (``ray_cluster``) and gateways on free loopback ports in front of
it.

- ``served_models``: deploys ``sevennet-0/fused`` once per session (one replica,
  half a CPU, one torch thread) and deletes it at the end; yields
  ``(settings, handles)``.
- ``gateway_factory``: ``gateway_factory(extra_servicers=[...])`` starts a gateway
  (port 0, metrics on port 0, keys from ``serving_helpers``) against those
  deployments and stops it after the test.
- ``ray_gateway``: one such gateway shared by a module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from services.config import Settings
from services.gateway.server import ServicerHook
from services.gateway.targets import TargetTable, connect_targets
from tests.services.serving_helpers import GatewayThread, make_settings

GatewayFactory = Callable[..., GatewayThread]


@pytest.fixture(scope="session")
def served_models(ray_cluster: Any) -> Iterator[tuple[Settings, dict[Any, Any]]]:
    from services.deployments.app import deploy, undeploy

    settings = make_settings()
    handles = deploy(settings)
    try:
        yield settings, handles
    finally:
        undeploy(settings)


def _start(
    served: tuple[Settings, dict[Any, Any]], extra: Sequence[ServicerHook] = ()
) -> GatewayThread:
    settings, handles = served

    async def table() -> TargetTable:
        return await connect_targets(settings, handles)

    return GatewayThread(settings, table, extra_servicers=extra)


@pytest.fixture
def gateway_factory(
    served_models: tuple[Settings, dict[Any, Any]],
) -> Iterator[GatewayFactory]:
    started: list[GatewayThread] = []

    def start(extra_servicers: Sequence[ServicerHook] = ()) -> GatewayThread:
        gateway = _start(served_models, extra_servicers)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def ray_gateway(
    served_models: tuple[Settings, dict[Any, Any]],
) -> Iterator[GatewayThread]:
    gateway = _start(served_models)
    yield gateway
    gateway.stop()
