"""The whole serving path on a real local Ray Serve (CPU) over real gRPC: results
equal the in-process model, concurrency changes nothing, deadlines propagate, and
the metrics exist under their documented names and pass ``promtool check metrics``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from ase.build import molecule
from ase.optimize import BFGS

from services.client import EquiserveCalculator, EquiserveClient, Result
from services.deployments.batching import DeadlineExpiredError, QueueFullError
from services.gateway.errors import status_for
from services.metrics import METHODS, STATUS_CODES, UNKNOWN
from tests.services.serving_helpers import (
    API_KEY,
    GatewayThread,
    si_cell,
    small_structures,
)

pytestmark = pytest.mark.ray

# float32 model: batching changes summation order, so results agree to roundoff.
ENERGY_ATOL = 2e-4  # eV
FORCE_ATOL = 2e-4  # eV/Å
STRESS_ATOL = 2e-6  # eV/Å^3

DOCUMENTED_METRICS = (
    "equiserve_request_duration_seconds",
    "equiserve_queue_wait_seconds",
    "equiserve_batch_compute_seconds",
    "equiserve_batch_structures",
    "equiserve_batch_atoms",
    "equiserve_structures_processed_total",
    "equiserve_atoms_processed_total",
    "equiserve_request_errors_total",
    "equiserve_requests_in_flight",
    "equiserve_replicas",
)


@pytest.fixture(scope="module")
def in_process() -> Any:
    import torch

    import models

    torch.set_num_threads(1)
    return models.load_model("sevennet-0", backend="fused", device="cpu")


@pytest.fixture(scope="module")
def client(ray_gateway: GatewayThread) -> Iterator[EquiserveClient]:
    with EquiserveClient(ray_gateway.address, api_key=API_KEY, timeout=120) as c:
        yield c


def _assert_same(got: Any, want: Any, stress: bool = True) -> None:
    assert isinstance(got, Result), got
    assert got.forces is not None
    np.testing.assert_allclose(got.energy, want.energy, rtol=0, atol=ENERGY_ATOL)
    np.testing.assert_allclose(got.forces, want.forces, rtol=0, atol=FORCE_ATOL)
    if stress and want.stress is not None:
        assert got.stress is not None
        np.testing.assert_allclose(got.stress, want.stress, rtol=0, atol=STRESS_ATOL)


def test_served_results_equal_the_in_process_model(client, in_process):
    structures = small_structures()
    want = in_process.predict(structures, compute_stress=True)
    got = client.predict(structures, properties=("energy", "forces", "stress"))
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)
    assert got[1].stress is None  # a molecule has no stress


def test_the_stream_equals_the_unary_call(client):
    structures = small_structures()
    unary = client.predict(structures)
    streamed = dict(client.predict_stream(structures))
    assert sorted(streamed) == list(range(len(structures)))
    for i, result in enumerate(unary):
        assert isinstance(result, Result)
        _assert_same(streamed[i], result)


def test_concurrent_clients_get_the_same_results_as_one_by_one(client):
    per_client = [[si_cell(10 + k), molecule("H2O")] for k in range(6)]
    alone = [client.predict(structures) for structures in per_client]
    together: list[Any] = [None] * len(per_client)

    def run(k: int) -> None:
        together[k] = client.predict(per_client[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(per_client))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, results in enumerate(together):
        for got, want in zip(results, alone[k], strict=True):
            _assert_same(got, want)


def test_the_deadline_propagates_through_serve(client):
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell(i) for i in range(8)], timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_ase_optimisers_drive_the_served_model(ray_gateway, in_process):
    atoms = si_cell(3, rattle=0.05)
    atoms.calc = EquiserveCalculator(ray_gateway.address, api_key=API_KEY)
    (want,) = in_process.predict([atoms])
    np.testing.assert_allclose(atoms.get_potential_energy(), want.energy,
                               atol=ENERGY_ATOL)  # fmt: skip
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=3)
    assert atoms.get_potential_energy() < start


def _scrape(gateway: GatewayThread) -> str:
    with urllib.request.urlopen(gateway.metrics_url, timeout=10) as reply:
        return str(reply.read().decode())


def test_metrics_exist_with_bounded_labels_and_pass_promtool(client, ray_gateway):
    client.predict(small_structures()[:2])
    for model in ("no-such-model-1", "no-such-model-2"):
        with pytest.raises(grpc.RpcError):
            client.predict([si_cell()], model=model, backend=model)
    text = _scrape(ray_gateway)

    for name in DOCUMENTED_METRICS:
        assert re.search(rf"^{name}(_bucket|_count|_sum)?{{", text, re.M), name
    # declared even where no replica has a GPU to report
    assert "# TYPE equiserve_gpu_memory_bytes gauge" in text
    allowed = {
        "model": {"sevennet-0", UNKNOWN},
        "backend": {"fused", UNKNOWN},
        "method": set(METHODS) | {UNKNOWN},
        "code": set(STATUS_CODES),
    }
    for label, value in re.findall(r'(\w+)="([^"]*)"', text):
        if label in allowed:
            assert value in allowed[label], (label, value)
    assert 'code="NOT_FOUND"' in text

    # promtool is required (apt-get install prometheus); never skipped
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install -y prometheus"
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)  # fmt: skip
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def _raise(kind: str) -> None:
    if kind == "queue":
        raise QueueFullError("replica queue holds 10 atoms; retry with backoff")
    raise DeadlineExpiredError("the deadline passed while the structure queued")


def test_replica_errors_keep_their_status_through_ray(ray_cluster):
    import ray

    remote = ray.remote(num_cpus=0.1)(_raise)
    expected = {
        "queue": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    for kind, code in expected.items():
        with pytest.raises(Exception) as err:
            ray.get(remote.remote(kind), timeout=60)
        assert status_for(err.value)[0] == code
