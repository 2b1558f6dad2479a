"""Settings of the serving platform, read from the environment once at start-up.

Nothing here is read at import time: entry points call :meth:`Settings.from_env`
once and pass the frozen object down. Every variable, its default and its meaning:

==================================  ====================  =============================
variable                            default               meaning
==================================  ====================  =============================
EQUISERVE_GRPC_ADDRESS              127.0.0.1:50051       gateway bind address
EQUISERVE_METRICS_HOST              127.0.0.1             /metrics bind host
EQUISERVE_METRICS_PORT              9464                  /metrics port (0: any free)
EQUISERVE_API_KEYS                  (none)                ``tenant:key,tenant2:key2``
EQUISERVE_API_KEYS_FILE             (none)                file, one ``tenant:key`` a
                                                          line (a mounted Secret)
EQUISERVE_ALLOW_UNAUTHENTICATED     false                 serve without keys (dev only)
EQUISERVE_MAX_MESSAGE_BYTES         67108864              gRPC message size limit
EQUISERVE_MAX_STRUCTURES            1000                  structures per request
EQUISERVE_MAX_ATOMS                 10000                 atoms per structure
EQUISERVE_DEPLOYMENTS               sevennet-0/fused      ``model/backend,...``
EQUISERVE_REPLICAS                  1                     replicas per deployment
EQUISERVE_REPLICA_CPUS              1                     Ray CPUs per replica
EQUISERVE_TORCH_THREADS             (= replica CPUs)      torch threads per replica
EQUISERVE_DEVICE                    auto                  cpu, cuda or auto
EQUISERVE_DTYPE                     float32               model dtype
EQUISERVE_BATCH_MAX_ATOMS           0 (auto)              atom budget per batch; 0:
                                                          1024 on CPU, probed on GPU
EQUISERVE_BATCH_MAX_EDGES           0 (none)              edge budget per batch
EQUISERVE_BATCH_MAX_WAIT_MS         2                     wait for a batch to fill
EQUISERVE_MAX_QUEUED_ATOMS          200000                replica queue bound, atoms
EQUISERVE_MAX_INFLIGHT_STRUCTURES   20000                 gateway bound per deployment
EQUISERVE_SHUTDOWN_GRACE_S          10                    graceful shutdown period
EQUISERVE_MODEL_LOADER              models:load_model     ``module:function`` loading
                                                          a model (tests use a fake)
==================================  ====================  =============================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Separates model from backend in EQUISERVE_DEPLOYMENTS; backend names may hold ':'.
DEPLOYMENT_SEPARATOR = "/"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class DeploymentConfig:
    """One Serve deployment: a model with one tensor-product backend.

    Attributes:
        model: model name as known to the model library, e.g. ``sevennet-0``.
        backend: backend name, e.g. ``fused`` or ``cp:rank=32``.
    """

    model: str
    backend: str

    @property
    def key(self) -> tuple[str, str]:
        return self.model, self.backend

    @property
    def app_name(self) -> str:
        """Serve application name, unique per (model, backend)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.backend)
        return f"equiserve-{self.model}-{safe}"


@dataclass(frozen=True)
class ReplicaOptions:
    """How each replica runs and batches.

    Attributes:
        num_replicas: replicas per deployment.
        num_cpus: Ray CPUs reserved per replica (fractions allowed).
        torch_threads: intra-op threads of torch in the replica.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when a GPU is visible).
        dtype: model dtype, ``float32`` or ``float64``.
        batch_max_atoms: atom budget of one batch; 0 picks it (1024 on CPU, a memory
            probe on GPU).
        batch_max_edges: edge budget of one batch (estimated from density and
            cutoff); 0 means no edge budget.
        batch_max_wait_s: longest wait for a batch to fill, s.
        max_queued_atoms: atoms a replica may hold queued before it refuses work.
        model_loader: ``module:function`` called as
            ``function(name, backend=..., device=..., dtype=...)``.
    """

    num_replicas: int = 1
    num_cpus: float = 1.0
    torch_threads: int = 1
    device: str = "auto"
    dtype: str = "float32"
    batch_max_atoms: int = 0
    batch_max_edges: int = 0
    batch_max_wait_s: float = 0.002
    max_queued_atoms: int = 200_000
    model_loader: str = "models:load_model"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway and its deployments are configured with.

    Attributes:
        grpc_address: ``host:port`` the gateway binds (port 0 picks a free one).
        metrics_host: host of the ``/metrics`` HTTP server.
        metrics_port: port of the ``/metrics`` HTTP server (0 picks a free one).
        api_keys: API key -> tenant.
        allow_unauthenticated: accept calls without a key (tenant ``anonymous``);
            refused unless no key is configured.
        max_message_bytes: gRPC send and receive limit, bytes.
        max_structures_per_request: structures accepted in one Predict call.
        max_atoms_per_structure: atoms accepted in one structure.
        deployments: the (model, backend) pairs to serve.
        replica: how replicas run and batch.
        max_inflight_structures: structures the gateway keeps in flight per
            deployment before it answers RESOURCE_EXHAUSTED.
        shutdown_grace_s: grace period for in-flight RPCs at shutdown, s.
    """

    grpc_address: str = "127.0.0.1:50051"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    api_keys: Mapping[str, str] = field(default_factory=dict)
    allow_unauthenticated: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_structures_per_request: int = 1000
    max_atoms_per_structure: int = 10_000
    deployments: tuple[DeploymentConfig, ...] = (
        DeploymentConfig("sevennet-0", "fused"),
    )
    replica: ReplicaOptions = field(default_factory=ReplicaOptions)
    max_inflight_structures: int = 20_000
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.api_keys and not self.allow_unauthenticated:
            raise ConfigError(
                "no API keys configured; set EQUISERVE_API_KEYS='tenant:key,...' or "
                "EQUISERVE_API_KEYS_FILE, or EQUISERVE_ALLOW_UNAUTHENTICATED=true for "
                "local development"
            )
        if not self.deployments:
            raise ConfigError("EQUISERVE_DEPLOYMENTS names no deployment")
        for name in ("max_message_bytes", "max_structures_per_request",
                     "max_atoms_per_structure", "max_inflight_structures"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``env`` (default ``os.environ``) once.

        Raises:
            ConfigError: naming the variable that is malformed.
        """
        env = os.environ if env is None else env
        num_cpus = _float(env, "EQUISERVE_REPLICA_CPUS", 1.0)
        replica = ReplicaOptions(
            num_replicas=_int(env, "EQUISERVE_REPLICAS", 1),
            num_cpus=num_cpus,
            torch_threads=_int(env, "EQUISERVE_TORCH_THREADS", max(1, round(num_cpus))),
            device=env.get("EQUISERVE_DEVICE", "auto"),
            dtype=env.get("EQUISERVE_DTYPE", "float32"),
            batch_max_atoms=_int(env, "EQUISERVE_BATCH_MAX_ATOMS", 0),
            batch_max_edges=_int(env, "EQUISERVE_BATCH_MAX_EDGES", 0),
            batch_max_wait_s=_float(env, "EQUISERVE_BATCH_MAX_WAIT_MS", 2.0) / 1000,
            max_queued_atoms=_int(env, "EQUISERVE_MAX_QUEUED_ATOMS", 200_000),
            model_loader=env.get("EQUISERVE_MODEL_LOADER", "models:load_model"),
        )
        return cls(
            grpc_address=env.get("EQUISERVE_GRPC_ADDRESS", "127.0.0.1:50051"),
            metrics_host=env.get("EQUISERVE_METRICS_HOST", "127.0.0.1"),
            metrics_port=_int(env, "EQUISERVE_METRICS_PORT", 9464),
            api_keys=load_api_keys(
                env.get("EQUISERVE_API_KEYS", ""), env.get("EQUISERVE_API_KEYS_FILE")
            ),
            allow_unauthenticated=_bool(env, "EQUISERVE_ALLOW_UNAUTHENTICATED"),
            max_message_bytes=_int(
                env, "EQUISERVE_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES
            ),
            max_structures_per_request=_int(env, "EQUISERVE_MAX_STRUCTURES", 1000),
            max_atoms_per_structure=_int(env, "EQUISERVE_MAX_ATOMS", 10_000),
            deployments=parse_deployments(
                env.get("EQUISERVE_DEPLOYMENTS", "sevennet-0/fused")
            ),
            replica=replica,
            max_inflight_structures=_int(
                env, "EQUISERVE_MAX_INFLIGHT_STRUCTURES", 20_000
            ),
            shutdown_grace_s=_float(env, "EQUISERVE_SHUTDOWN_GRACE_S", 10.0),
        )


def parse_deployments(text: str) -> tuple[DeploymentConfig, ...]:
    """Parse ``model/backend,model/backend`` into deployment configs.

    Raises:
        ConfigError: when an entry lacks the ``/`` or repeats another.
    """
    out: list[DeploymentConfig] = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        model, sep, backend = entry.partition(DEPLOYMENT_SEPARATOR)
        if not sep or not model or not backend:
            raise ConfigError(
                f"EQUISERVE_DEPLOYMENTS entry {entry!r} is not 'model/backend' "
                "(e.g. 'sevennet-0/fused')"
            )
        config = DeploymentConfig(model.strip(), backend.strip())
        if config in out:
            raise ConfigError(f"EQUISERVE_DEPLOYMENTS names {entry!r} twice")
        out.append(config)
    return tuple(out)


def load_api_keys(inline: str, path: str | None) -> dict[str, str]:
    """Collect API keys from ``tenant:key`` pairs inline and/or in a file.

    Args:
        inline: comma-separated ``tenant:key`` pairs (may be empty).
        path: a file with one ``tenant:key`` per line (blank lines and ``#``
            comments ignored), e.g. a mounted Kubernetes Secret; or ``None``.

    Returns:
        API key -> tenant.

    Raises:
        ConfigError: for a malformed entry or a key given to two tenants.
    """
    entries = [e.strip() for e in inline.split(",")]
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as err:
            raise ConfigError(f"EQUISERVE_API_KEYS_FILE {path!r}: {err}") from err
        entries += [line.strip() for line in lines if not line.startswith("#")]
    keys: dict[str, str] = {}
    for entry in filter(None, entries):
        tenant, sep, key = entry.partition(":")
        if not sep or not tenant.strip() or not key.strip():
            raise ConfigError(
                "an API key entry is not 'tenant:key' (entry starting "
                f"{entry[:3]!r}...); fix EQUISERVE_API_KEYS or EQUISERVE_API_KEYS_FILE"
            )
        key = key.strip()
        if key in keys and keys[key] != tenant.strip():
            raise ConfigError(f"one API key is given to two tenants: {keys[key]!r}, "
                              f"{tenant.strip()!r}")  # fmt: skip
        keys[key] = tenant.strip()
    return keys


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name}={raw!r} is not true or false")
