"""Helpers of the serving tests: a gateway running in a background event loop,
deployment-handle doubles, and sample structures."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

from models.registry import BackendInfo
from models.structure import Limits
from services.config import DeploymentConfig, ReplicaOptions, Settings
from services.deployments.batching import ItemResult
from services.deployments.replica import ReplicaInfo, ReplicaRequest
from services.gateway.server import Gateway, ServicerHook, build_server
from services.gateway.targets import Target, TargetTable
from services.metrics import BatchFigures

API_KEY = "test-key-0123456789"
TENANT = "tenant-a"
OTHER_KEY = "other-key-9876543210"
OTHER_TENANT = "tenant-b"


def make_settings(**overrides: Any) -> Settings:
    """Settings for a gateway on a free loopback port with two tenants."""
    values: dict[str, Any] = {
        "grpc_address": "127.0.0.1:0",
        "metrics_host": "127.0.0.1",
        "metrics_port": 0,
        "api_keys": {API_KEY: TENANT, OTHER_KEY: OTHER_TENANT},
        "deployments": (DeploymentConfig("sevennet-0", "fused"),),
        "replica": ReplicaOptions(num_cpus=0.5, torch_threads=1),
        "shutdown_grace_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


def si_cell(seed: int = 0, rattle: float = 0.02) -> Atoms:
    """8-atom diamond Si, rattled (periodic)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def small_structures() -> list[Atoms]:
    """A mix of small periodic and molecular structures."""
    return [si_cell(0), molecule("H2O"), si_cell(1), molecule("CH4"), si_cell(2)]


class GatewayThread:
    """A gateway served from its own event loop in a background thread.

    Args:
        settings: the gateway settings.
        table_factory: coroutine building the target table inside the loop.
        extra_servicers: passed to ``build_server``.
    """

    def __init__(
        self,
        settings: Settings,
        table_factory: Callable[[], Awaitable[TargetTable]],
        extra_servicers: Sequence[ServicerHook] = (),
    ) -> None:
        self.table: TargetTable | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> Gateway:
            table = await table_factory()
            self.table = table
            gateway = build_server(settings, table, extra_servicers=extra_servicers)
            await gateway.start()
            return gateway

        self.gateway: Gateway = self.call(start())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.metrics_port}/metrics"

    def call(self, coro: Awaitable[Any], timeout: float = 120.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def stop(self, grace: float = 0.5) -> None:
        try:
            self.call(self.gateway.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


# -- deployment-handle doubles --------------------------------------------------


@dataclass
class FakePrediction:
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None


class _Response:
    """Awaitable and cancellable, like a Serve ``DeploymentResponse``."""

    def __init__(self, coro: Awaitable[Any]) -> None:
        self._task = asyncio.ensure_future(coro)

    def __await__(self) -> Any:
        return self._task.__await__()

    def cancel(self) -> None:
        self._task.cancel()


class _Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        return self._fn(*args)


@dataclass
class FakeHandle:
    """A Serve handle double computing energy = sum of atomic numbers (eV).

    Attributes:
        delay_s: time each call takes.
        error: raised by every call when set.
        calls: requests received.
    """

    delay_s: float = 0.0
    error: BaseException | None = None
    calls: list[ReplicaRequest] = field(default_factory=list)

    def options(self, **_: Any) -> FakeHandle:
        return self

    @property
    def predict(self) -> _Method:
        return _Method(lambda request: _Response(self._predict(request)))

    @property
    def predict_stream(self) -> _Method:
        return _Method(self._stream)

    async def _predict(self, request: ReplicaRequest) -> list[ItemResult]:
        self.calls.append(request)
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        atoms = sum(s.n_atoms for s in request.structures)
        batch = BatchFigures("0", len(request.structures), atoms, self.delay_s)
        return [
            ItemResult(
                self._value(s, request.compute_stress), 0.0, batch if i == 0 else None
            )
            for i, s in enumerate(request.structures)
        ]

    async def _stream(self, request: ReplicaRequest) -> AsyncIterator[tuple[int, Any]]:
        items = await self._predict(request)
        for i in reversed(range(len(items))):  # out of order on purpose
            yield i, items[i]

    @staticmethod
    def _value(structure: Any, stress: bool) -> FakePrediction:
        n = structure.n_atoms
        periodic = bool(np.asarray(structure.pbc).any())
        return FakePrediction(
            energy=float(np.sum(structure.numbers)),
            forces=np.tile([1.0, 2.0, 3.0], (n, 1)),
            stress=np.arange(6.0) if stress and periodic else None,
        )


@dataclass
class FakeSpec:
    name: str
    version: str = "1.0"
    description: str = "a test double"
    cutoff: float = 5.0
    elements: frozenset[int] = frozenset({1, 6, 8, 14})
    default_backend: str = "fused"
    backends: dict[str, BackendInfo] = field(
        default_factory=lambda: {
            "fused": BackendInfo("fused", True),
            "cp": BackendInfo("cp", False, "approximate: rank-limited"),
        }
    )


def fake_target(
    model: str, backend: str, exact: bool, handle: FakeHandle, max_inflight: int = 100
) -> Target:
    info = ReplicaInfo(
        model=model, backend=backend, version="1.0", exact=exact,
        spec=FakeSpec(model), limits=Limits(max_atoms=100), device="cpu",
        torch_threads=1, batch_max_atoms=16,
    )  # fmt: skip
    return Target(model, backend, info, handle, max_inflight)
