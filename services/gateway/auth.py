"""API-key authentication for every servicer on the gateway.

Clients send their key in the ``x-api-key`` metadata entry. Keys map to tenants
(:func:`services.config.load_api_keys`); the key is compared with every configured
key by ``hmac.compare_digest`` (no early exit), so timing reveals nothing about how
close a guess was. A call without a key, or with a wrong one, ends with
UNAUTHENTICATED before its servicer runs. The standard health service is exempt
(kubelet gRPC probes send no metadata).

Servicers read the caller's tenant with :func:`tenant_from_context`::

    from services.gateway.auth import tenant_from_context

    async def Submit(self, request, context):
        tenant = tenant_from_context(context)
"""

from __future__ import annotations

import contextvars
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc

logger = logging.getLogger(__name__)

API_KEY_METADATA = "x-api-key"
ANONYMOUS = "anonymous"
# Methods reachable without a key.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)

_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "equiserve_tenant", default=None
)


class ApiKeyStore:
    """API key -> tenant, looked up in constant time per configured key.

    Args:
        keys: API key -> tenant.
        allow_unauthenticated: callers without a key get the tenant
            ``anonymous`` (only honoured when no key is configured).
    """

    def __init__(self, keys: Mapping[str, str], allow_unauthenticated: bool = False):
        self._keys = [(key.encode(), tenant) for key, tenant in keys.items()]
        self.allow_unauthenticated = allow_unauthenticated and not self._keys

    def tenant_for(self, key: str | None) -> str | None:
        """The tenant owning ``key``, or ``None`` when it matches no key."""
        if self.allow_unauthenticated:
            return ANONYMOUS
        if not key:
            return None
        given = key.encode()
        found: str | None = None
        for known, tenant in self._keys:
            if hmac.compare_digest(known, given):
                found = tenant
        return found


def tenant_from_context(context: grpc.aio.ServicerContext) -> str:
    """The authenticated tenant of the RPC being served.

    Args:
        context: the servicer context of the current RPC.

    Raises:
        RuntimeError: when called outside an RPC that passed
            :class:`ApiKeyInterceptor` (a wiring bug, not a client error).
    """
    tenant = _TENANT.get()
    if tenant is None:
        raise RuntimeError(
            "no authenticated tenant for this RPC; the servicer must run on a server "
            "built by services.gateway.server.build_server (ApiKeyInterceptor)"
        )
    return tenant


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid ``x-api-key``; records the tenant.

    Args:
        store: the configured keys.
    """

    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        key = None
        for entry, value in handler_call_details.invocation_metadata or ():
            if entry == API_KEY_METADATA:
                key = value if isinstance(value, str) else value.decode()
        tenant = self._store.tenant_for(key)
        if tenant is None:
            why = "no API key" if not key else "a wrong API key"
            logger.warning("refused %s: %s", method, why)
            return _rewrap(handler, _refuse(f"{why} in metadata {API_KEY_METADATA!r}"))
        return _rewrap(handler, _with_tenant(tenant))


Wrapper = Callable[[Callable[..., Any]], Callable[..., Any]]


def _with_tenant(tenant: str) -> Wrapper:
    # each RPC runs in its own asyncio task (own context), so no reset is needed
    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: Any) -> Any:
                _TENANT.set(tenant)
                async for item in behaviour(request, context):
                    yield item

            return stream

        async def unary(request: Any, context: Any) -> Any:
            _TENANT.set(tenant)
            return await behaviour(request, context)

        return unary

    return wrap


def _refuse(message: str) -> Wrapper:
    def wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return deny

    return wrap


def _rewrap(handler: Any, wrap: Wrapper) -> Any:
    """The same kind of method handler with its behaviour wrapped."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attr, make in kinds:
        behaviour = getattr(handler, attr)
        if behaviour is not None:
            return make(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
