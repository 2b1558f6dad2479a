"""Start the local platform (``python -m services.serve_main``) for a load run.

:class:`LocalPlatform` runs the real gateway, Ray and the Serve deployments as one
foreground process tree on loopback ports, with fresh API keys for two tenants, waits
until the gateway's ``grpc.health.v1`` says SERVING, and stops it with SIGINT (the
gateway drains; serve_main shuts down the Ray it started) when the run ends. The
process tree is what the soak test samples for memory.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
TENANT_NAMES = ("tenant-a", "tenant-b", "tenant-c")


class PlatformError(RuntimeError):
    """The platform did not start (its log tail is in the message)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPlatform:
    """The serving platform as a subprocess on 127.0.0.1.

    Args:
        log_path: where the platform's stdout and stderr go.
        env: extra environment (``EQUISERVE_*`` settings) over sensible defaults:
            one ``sevennet-0/fused`` deployment, one replica of 1 CPU.
        num_cpus: CPUs of the platform's private Ray.

    Attributes:
        target: the gateway's ``host:port``.
        metrics_url: the gateway's ``/metrics`` URL.
        keys: tenant -> API key (fresh random keys each start).
        pid: the platform's process id (root of its process tree).
    """

    def __init__(
        self, log_path: Path, env: Mapping[str, str] | None = None, num_cpus: int = 2
    ) -> None:
        self.log_path = log_path
        self.keys = {name: secrets.token_hex(16) for name in TENANT_NAMES}
        grpc_port, metrics_port = free_port(), free_port()
        self.target = f"127.0.0.1:{grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.env = {
            "EQUISERVE_GRPC_ADDRESS": self.target,
            "EQUISERVE_METRICS_HOST": "127.0.0.1",
            "EQUISERVE_METRICS_PORT": str(metrics_port),
            "EQUISERVE_API_KEYS": ",".join(f"{t}:{k}" for t, k in self.keys.items()),
            "EQUISERVE_DEPLOYMENTS": "sevennet-0/fused",
            "EQUISERVE_REPLICAS": "1",
            "EQUISERVE_REPLICA_CPUS": "1",
            **(env or {}),
        }
        self.num_cpus = num_cpus
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise PlatformError("the platform is not running")
        return self._proc.pid

    def start(self) -> LocalPlatform:
        """Start the platform and wait until its gateway reports SERVING.

        Raises:
            PlatformError: if it exits or is not ready within READY_TIMEOUT_S.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # a private local Ray, never one named by the caller's RAY_ADDRESS
        env = {
            k: v for k, v in {**os.environ, **self.env}.items() if k != "RAY_ADDRESS"
        }
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "services.serve_main",
                 "--num-cpus", str(self.num_cpus)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        logger.info("platform pid %d starting on %s", self._proc.pid, self.target)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PlatformError(f"the platform exited early:\n{self._log_tail()}")
            if self._serving():
                logger.info("platform ready on %s", self.target)
                return self
            time.sleep(1.0)
        self.stop()
        raise PlatformError(
            f"not SERVING after {READY_TIMEOUT_S} s:\n{self._log_tail()}"
        )

    def _serving(self) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        """SIGINT (graceful drain), then SIGKILL the tree if it does not exit."""
        if self._proc is None or self._proc.poll() is not None:
            return
        import psutil

        tree = psutil.Process(self._proc.pid).children(recursive=True)
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("platform did not stop in %s s: killing", STOP_TIMEOUT_S)
            self._proc.kill()
            self._proc.wait()
        for child in tree:  # Ray processes the platform started and left behind
            if child.is_running():
                child.kill()

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
