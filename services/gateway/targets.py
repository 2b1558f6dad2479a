"""The deployments the gateway routes to, and how a request picks one.

A :class:`Target` is one (model, backend) Serve deployment with what its replicas
reported (:class:`~services.deployments.replica.ReplicaInfo`) and a bound on the
structures the gateway keeps in flight for it. :meth:`TargetTable.resolve` applies
the routing rules: unknown names are NOT_FOUND, an empty backend picks the model's
exact served backend, and an approximate backend is used only when named exactly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from equiserve.v1 import predict_pb2

from services.config import Settings
from services.deployments.replica import ReplicaInfo
from services.gateway.errors import (
    ApproximateBackendError,
    NotFoundError,
    OverloadedError,
)

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """One served (model, backend).

    Attributes:
        model: model name as configured.
        backend: backend name as configured.
        info: what the replicas reported at start.
        handle: the Serve ``DeploymentHandle`` (or a test double with the same
            ``predict`` / ``predict_stream`` methods).
        max_inflight: structures in flight before RESOURCE_EXHAUSTED.
    """

    model: str
    backend: str
    info: ReplicaInfo
    handle: Any
    max_inflight: int
    inflight: int = field(default=0)

    @property
    def family(self) -> str:
        """The backend without its options: ``cp`` for ``cp:rank=32``."""
        return self.backend.split(":", 1)[0]

    @contextlib.contextmanager
    def admit(self, n_structures: int) -> Iterator[None]:
        """Hold ``n_structures`` in flight for the duration of the block.

        Raises:
            OverloadedError: when the bound would be exceeded (a request alone
                larger than the bound is admitted when nothing else is in flight).
        """
        if self.inflight and self.inflight + n_structures > self.max_inflight:
            raise OverloadedError(
                f"{self.model}/{self.backend} has {self.inflight} structures in "
                f"flight (limit {self.max_inflight}); retry with backoff"
            )
        self.inflight += n_structures
        try:
            yield
        finally:
            self.inflight -= n_structures


class TargetTable:
    """Every served target, by model and backend."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = list(targets)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(t.model, t.backend) for t in self.targets]

    def resolve(self, model: str, backend: str) -> Target:
        """The target for a request's ``model`` and ``backend`` fields.

        Raises:
            NotFoundError: unknown model, or a backend not served for it.
            ApproximateBackendError: the choice would be an approximate backend
                that the request did not name exactly.
        """
        served = [t for t in self.targets if t.model == model]
        if not served:
            names = sorted({t.model for t in self.targets})
            raise NotFoundError(
                f"model {model!r} is not served here (served: {names}); "
                "call ListModels to see models and their backends"
            )
        if not backend:
            return self._default(model, served)
        for t in served:
            if backend in (t.backend, t.info.backend):
                return t
        approximate = [t for t in served if t.family == backend and not t.info.exact]
        if approximate:
            raise ApproximateBackendError(
                f"backend {backend!r} of {model!r} is approximate; to accept its "
                f"error, name it exactly as backend={approximate[0].backend!r}"
            )
        raise NotFoundError(
            f"model {model!r} has no served backend {backend!r} (served: "
            f"{[t.backend for t in served]}); call ListModels to see them"
        )

    def default_backend(self, model: str) -> str:
        """What an empty ``backend`` resolves to, or ``""`` if none is exact."""
        try:
            return self.resolve(model, "").backend
        except ApproximateBackendError:
            return ""

    def _default(self, model: str, served: list[Target]) -> Target:
        exact = [t for t in served if t.info.exact]
        if not exact:
            names = [t.backend for t in served]
            raise ApproximateBackendError(
                f"model {model!r} is served here only with approximate backend(s) "
                f"{names}; name one in PredictRequest.backend to accept its error"
            )
        preferred = getattr(exact[0].info.spec, "default_backend", "")
        for t in exact:
            if t.family == preferred or t.backend == preferred:
                return t
        return exact[0]

    def list_models(self) -> predict_pb2.ListModelsResponse:
        """The ListModels answer: every model, its backends, exactness, limits."""
        response = predict_pb2.ListModelsResponse()
        for model in dict.fromkeys(t.model for t in self.targets):
            served = [t for t in self.targets if t.model == model]
            info = served[0].info
            spec = info.spec
            entry = response.models.add(
                name=model,
                version=info.version,
                cutoff=float(spec.cutoff),
                elements=sorted(int(z) for z in spec.elements),
                description=str(getattr(spec, "description", "")),
                default_backend=self.default_backend(model),
                max_atoms=int(info.limits.max_atoms),
            )
            notes: Mapping[str, Any] = getattr(spec, "backends", {})
            for t in served:
                note = getattr(notes.get(t.family), "note", "")
                entry.backends.add(
                    name=t.backend, exact=t.info.exact, note=note, served=True
                )
            for name, backend_info in notes.items():
                if all(t.family != name for t in served):
                    entry.backends.add(
                        name=name,
                        exact=bool(backend_info.exact),
                        note=str(backend_info.note),
                        served=False,
                    )
        return response


async def connect_targets(
    settings: Settings, handles: Mapping[tuple[str, str], Any]
) -> TargetTable:
    """Ask each deployment what it serves and build the routing table.

    Args:
        settings: the configured deployments and in-flight bound.
        handles: ``(model, backend)`` -> Serve ``DeploymentHandle``.
    """
    targets = []
    for config in settings.deployments:
        handle = handles[config.key]
        info: ReplicaInfo = await handle.info.remote()
        logger.info(
            "target %s/%s: backend %s, exact %s, device %s, %d atoms per batch",
            config.model, config.backend, info.backend, info.exact, info.device,
            info.batch_max_atoms,
        )  # fmt: skip
        targets.append(
            Target(
                config.model,
                config.backend,
                info,
                handle,
                settings.max_inflight_structures,
            )
        )
    return TargetTable(targets)
