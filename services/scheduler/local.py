"""The campaign service on its own server, in-process: no Ray, no model serving.

:class:`LocalCampaignServer` runs a :class:`~services.scheduler.scheduler.Scheduler`
and a grpc.aio server (API keys checked by the gateway's interceptor) on an event
loop in a background thread. Tests, the scheduler benchmark and notebooks use it;
production registers the servicer on the gateway instead
(:func:`services.scheduler.servicer.add_campaign_service`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import grpc

from services.gateway.auth import ApiKeyInterceptor, ApiKeyStore
from services.scheduler.executors import Executor
from services.scheduler.scheduler import Scheduler, SchedulerConfig
from services.scheduler.servicer import CampaignBackend, add_campaign_service

logger = logging.getLogger(__name__)

T = TypeVar("T")
# gRPC message limit, bytes: the gateway's default (an upload chunk is one message).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Seconds a call into the server's loop may take before the caller gives up.
CALL_TIMEOUT_S = 60.0


class LocalCampaignServer:
    """Scheduler + CampaignService on ``127.0.0.1``, in a background thread.

    Args:
        config: scheduler settings (ignored with ``backend``).
        executor: computes work units (ignored with ``backend``).
        api_keys: API key -> tenant.
        check_model: passed to the servicer; default: the model registry.
        port: 0 for any free port.
        backend: serve this backend (e.g. the scheduler actor's
            :class:`~services.scheduler.ray_backend.ActorBackend`) instead of an
            in-process scheduler.
    """

    def __init__(
        self,
        config: SchedulerConfig | None,
        executor: Executor | None,
        api_keys: Mapping[str, str],
        check_model: Callable[[str, str], None] | None = None,
        port: int = 0,
        backend: CampaignBackend | None = None,
    ) -> None:
        self.config = config
        self.executor = executor
        self.backend = backend
        self.api_keys = dict(api_keys)
        self.check_model = check_model
        self.port = port
        self.scheduler: Scheduler | None = None
        self._server: grpc.aio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    def start(self) -> LocalCampaignServer:
        """Start the thread, the scheduler and the server."""
        self._thread.start()
        self.call(self._start())
        logger.info("campaign service on %s", self.address)
        return self

    async def _start(self) -> None:
        if self.backend is None:
            if self.config is None or self.executor is None:
                raise ValueError("give a backend, or a config and an executor")
            self.scheduler = Scheduler(self.config, self.executor)
            await self.scheduler.start()
            self.backend = self.scheduler
        await self._serve()

    def restart_server(self) -> None:
        """Stop and start the gRPC server alone (the scheduler keeps running)."""
        self.call(self._serve())

    async def _serve(self) -> None:
        if self.backend is None:
            raise RuntimeError("start() the server first")
        if self._server is not None:
            await self._server.stop(0)
        server = grpc.aio.server(
            interceptors=[ApiKeyInterceptor(ApiKeyStore(self.api_keys))],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        kwargs = {"check_model": self.check_model} if self.check_model else {}
        add_campaign_service(self.backend, **kwargs)(server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    def stop(self) -> None:
        """Stop the server, the scheduler and the thread."""
        if self._thread.is_alive():
            self.call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler.store.close()

    def __enter__(self) -> LocalCampaignServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
