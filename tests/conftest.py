"""Session-wide fixtures shared by every test package.

``ray_cluster`` starts one local Ray instance and Ray Serve for the whole pytest
session (Ray takes ~10 s and ~1 GB to start on two cores, so no test starts its own).
Tests that use it carry the ``ray`` marker. Fixtures local to one package live in
that package's own ``conftest.py``.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

logger = logging.getLogger(__name__)

# CPUs Ray may schedule on; the project's machines have two cores.
RAY_NUM_CPUS = 2


@dataclass(frozen=True)
class RayCluster:
    """What a test needs to know about the session's Ray instance.

    Attributes:
        address: the GCS address (``host:port``) of the local Ray instance.
        temp_dir: Ray's session directory root (logs under ``session_latest/logs``).
        serve_http_port: the loopback port of Serve's HTTP proxy.
        num_cpus: CPUs Ray schedules on.
    """

    address: str
    temp_dir: str
    serve_http_port: int
    num_cpus: int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """Start Ray and Ray Serve once per session; shut both down at the end.

    Ray gets its own short temporary directory (Unix socket paths are limited to
    ~107 characters, and the default /tmp/ray is shared with other users of the
    machine), ``address="local"`` so that it never joins another Ray instance, and
    no dashboard. Serve's HTTP proxy binds to 127.0.0.1 on a free port.

    Applications deployed by a test should be deleted by that test (or its own
    fixture) with ``serve.delete(name)``; the cluster itself stays up.
    """
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(
        address="local",
        num_cpus=RAY_NUM_CPUS,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    http_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    address = str(ray.get_runtime_context().gcs_address)
    logger.info("ray started at %s (temp dir %s)", address, temp_dir)
    try:
        yield RayCluster(
            address=address,
            temp_dir=temp_dir,
            serve_http_port=http_port,
            num_cpus=RAY_NUM_CPUS,
        )
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
