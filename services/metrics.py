"""Prometheus metrics of the serving path, declared once.

The gateway process owns every series: replicas report their batch figures (queue
wait, compute time, batch size, GPU memory) with the results they return, and the
gateway records each batch exactly once. Label values are bounded: ``model`` and
``backend`` come only from the configured deployments (anything else becomes
``unknown``), ``method`` from the fixed RPC set, ``code`` from ``grpc.StatusCode``.

Names (documented in the README, used by the Grafana dashboards and alert rules):

=============================================  =========  ===========================
name                                           type       labels
=============================================  =========  ===========================
equiserve_request_duration_seconds             histogram  model, backend, method
equiserve_queue_wait_seconds                   histogram  model, backend
equiserve_batch_compute_seconds                histogram  model, backend
equiserve_batch_structures                     histogram  model, backend
equiserve_batch_atoms                          histogram  model, backend
equiserve_structures_processed_total           counter    model, backend
equiserve_atoms_processed_total                counter    model, backend
equiserve_request_errors_total                 counter    model, backend, code
equiserve_requests_in_flight                   gauge      model, backend
equiserve_replicas                             gauge      model, backend
equiserve_gpu_memory_bytes                     gauge      model, backend
=============================================  =========  ===========================
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
# The RPCs whose latency is measured; anything else is labelled "unknown".
METHODS = frozenset({"Predict", "PredictStream", "ListModels"})
STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)

# Seconds, from a fast unary call (~1 ms) to a large request (minutes).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# Structures per batch.
STRUCTURE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Atoms per batch: from one small molecule to a packed GPU batch.
ATOM_BUCKETS = (
    8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
)  # fmt: skip


@dataclass(frozen=True)
class BatchFigures:
    """What a replica measured for one batch; travels back with its results.

    Attributes:
        batch_id: replica-unique id (for logs; never a label).
        n_structures: structures in the batch.
        n_atoms: atoms in the batch.
        compute_s: wall time of the model call, s.
        gpu_memory_bytes: peak GPU memory during the batch, or ``None`` on CPU.
    """

    batch_id: str
    n_structures: int
    n_atoms: int
    compute_s: float
    gpu_memory_bytes: int | None = None


class ServingMetrics:
    """Every metric of the serving path, in one registry.

    Args:
        deployments: the configured ``(model, backend)`` pairs; the only label
            values accepted for ``model`` and ``backend``.
        registry: where the metrics live; a fresh one by default, so that several
            gateways (tests) never clash in the global registry.
    """

    def __init__(
        self,
        deployments: Iterable[tuple[str, str]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._pairs = frozenset(deployments)
        self._models = frozenset(model for model, _ in self._pairs)
        self._backends = frozenset(backend for _, backend in self._pairs)
        mb = ("model", "backend")
        r = self.registry
        self.request_duration = Histogram(
            "equiserve_request_duration_seconds",
            "End-to-end duration of an RPC in the gateway, s.",
            (*mb, "method"), buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "equiserve_queue_wait_seconds",
            "Time a structure waited in its replica's queue before its batch ran, s.",
            mb, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_compute = Histogram(
            "equiserve_batch_compute_seconds",
            "Wall time of one batched model call in a replica, s.",
            mb, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_structures = Histogram(
            "equiserve_batch_structures", "Structures per batch.",
            mb, buckets=STRUCTURE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_atoms = Histogram(
            "equiserve_batch_atoms", "Atoms per batch.",
            mb, buckets=ATOM_BUCKETS, registry=r,
        )  # fmt: skip
        self.structures_processed = Counter(
            "equiserve_structures_processed",
            "Structures evaluated (successfully or with a per-structure error).",
            mb, registry=r,
        )  # fmt: skip
        self.atoms_processed = Counter(
            "equiserve_atoms_processed", "Atoms evaluated.", mb, registry=r
        )
        self.request_errors = Counter(
            "equiserve_request_errors",
            "RPCs that ended with a non-OK status, by gRPC status name.",
            (*mb, "code"), registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "equiserve_requests_in_flight", "RPCs being served now.", mb, registry=r
        )
        self.replicas = Gauge(
            "equiserve_replicas", "Running replicas of a deployment.", mb, registry=r
        )
        self.gpu_memory = Gauge(
            "equiserve_gpu_memory_bytes",
            "Peak GPU memory of the latest batch reported by a replica, bytes.",
            mb, registry=r,
        )  # fmt: skip

    def labels(self, model: str, backend: str) -> tuple[str, str]:
        """Bounded label values: a pair not configured here becomes ``unknown``."""
        if (model, backend) in self._pairs:
            return model, backend
        model = model if model in self._models else UNKNOWN
        backend = backend if backend in self._backends else UNKNOWN
        return model, backend

    def observe_request(
        self, model: str, backend: str, method: str, seconds: float
    ) -> None:
        """Record the end-to-end duration of one RPC."""
        method = method if method in METHODS else UNKNOWN
        self.request_duration.labels(*self.labels(model, backend), method).observe(
            seconds
        )

    def observe_error(self, model: str, backend: str, code: grpc.StatusCode) -> None:
        """Count one RPC that ended with ``code``."""
        name = code.name if code.name in STATUS_CODES else UNKNOWN
        self.request_errors.labels(*self.labels(model, backend), name).inc()

    def observe_structure(
        self, model: str, backend: str, n_atoms: int, queue_wait_s: float
    ) -> None:
        """Record one evaluated structure and how long it queued."""
        labels = self.labels(model, backend)
        self.structures_processed.labels(*labels).inc()
        self.atoms_processed.labels(*labels).inc(n_atoms)
        self.queue_wait.labels(*labels).observe(queue_wait_s)

    def observe_batch(self, model: str, backend: str, batch: BatchFigures) -> None:
        """Record one replica batch (call once per batch)."""
        labels = self.labels(model, backend)
        self.batch_compute.labels(*labels).observe(batch.compute_s)
        self.batch_structures.labels(*labels).observe(batch.n_structures)
        self.batch_atoms.labels(*labels).observe(batch.n_atoms)
        if batch.gpu_memory_bytes is not None:
            self.gpu_memory.labels(*labels).set(batch.gpu_memory_bytes)

    def set_replicas(self, model: str, backend: str, count: int) -> None:
        """Set the number of running replicas of one deployment."""
        self.replicas.labels(*self.labels(model, backend)).set(count)

    def start_http(self, host: str, port: int) -> tuple[Any, int]:
        """Serve ``/metrics`` on ``host:port`` (port 0 picks a free one).

        Returns:
            The HTTP server (call ``shutdown()`` on it to stop) and the bound port.
        """
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(server.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return server, bound
