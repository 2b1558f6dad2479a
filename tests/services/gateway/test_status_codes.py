"""Every status code of the gateway, over real gRPC on loopback, with handle doubles
in place of Ray Serve (the Ray-backed path is in tests/services/test_serving_ray.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from ase.build import molecule
from equiserve.v1 import predict_pb2, predict_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client import EquiserveClient, Result
from services.client.client import structure_message
from services.deployments.batching import QueueFullError
from services.gateway.auth import tenant_from_context
from services.gateway.server import PREDICT_SERVICE
from services.gateway.targets import Target, TargetTable
from tests.services.serving_helpers import (
    API_KEY,
    OTHER_KEY,
    OTHER_TENANT,
    TENANT,
    FakeHandle,
    GatewayThread,
    fake_target,
    make_settings,
    si_cell,
)

WHOAMI = "/test.Tenant/WhoAmI"


def _whoami_hook(server: grpc.aio.Server) -> str:
    """An extra servicer answering with the caller's tenant."""

    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return tenant_from_context(context).encode()

    handler = grpc.unary_unary_rpc_method_handler(whoami)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Tenant", {"WhoAmI": handler})]
    )
    return "test.Tenant"


def _table() -> TargetTable:
    return TargetTable(
        [
            fake_target("fake", "fused", True, FakeHandle()),
            fake_target("fake", "cp:rank=8", False, FakeHandle()),
            fake_target("approx-only", "cp:rank=8", False, FakeHandle()),
            fake_target("slow", "fused", True, FakeHandle(delay_s=1.0)),
            fake_target("broken", "fused", True, FakeHandle(error=RuntimeError("x"))),
            fake_target("full", "fused", True, FakeHandle(error=QueueFullError("q"))),
            fake_target("narrow", "fused", True, FakeHandle(delay_s=0.5), 1),
            fake_target("split", "fused", True, FakeHandle()),
        ]
    )


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    async def table() -> TargetTable:
        return _table()

    thread = GatewayThread(make_settings(), table, extra_servicers=[_whoami_hook])
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(gateway: GatewayThread) -> Iterator[EquiserveClient]:
    with EquiserveClient(gateway.address, api_key=API_KEY, timeout=10) as c:
        yield c


def _targets(gateway: GatewayThread) -> list[Target]:
    assert gateway.table is not None
    return gateway.table.targets


def _code(call: grpc.RpcError) -> grpc.StatusCode:
    return call.code()  # type: ignore[no-any-return]


def test_a_valid_request_gets_one_result_per_structure(client: EquiserveClient):
    results = client.predict([si_cell(), molecule("H2O")], model="fake")
    assert [r.energy for r in results if isinstance(r, Result)] == [112.0, 10.0]
    first = results[0]
    assert isinstance(first, Result) and first.forces is not None
    assert first.forces.shape == (8, 3) and first.stress is None


def test_stress_is_returned_only_when_asked_and_periodic(client: EquiserveClient):
    results = client.predict(
        [si_cell(), molecule("H2O")], model="fake", properties=("energy", "stress")
    )
    cell, mol = results
    assert isinstance(cell, Result) and isinstance(mol, Result)
    np.testing.assert_array_equal(cell.stress, np.arange(6.0))
    assert mol.stress is None and cell.forces is None


def test_the_stream_returns_every_index_once(client: EquiserveClient):
    structures = [si_cell(i) for i in range(5)]
    got = dict(client.predict_stream(structures, model="fake"))
    assert sorted(got) == list(range(5))


def test_no_api_key_is_unauthenticated(gateway: GatewayThread):
    with EquiserveClient(gateway.address, api_key=None, timeout=5) as anonymous:
        for call in (lambda: anonymous.predict([si_cell()], model="fake"),
                     anonymous.list_models):  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert _code(err.value) == grpc.StatusCode.UNAUTHENTICATED
            assert "no API key" in err.value.details()


def test_a_wrong_api_key_is_unauthenticated(gateway: GatewayThread):
    wrong = EquiserveClient(gateway.address, api_key=API_KEY + "x", timeout=5)
    with wrong, pytest.raises(grpc.RpcError) as err:
        wrong.predict([si_cell()], model="fake")
    assert _code(err.value) == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong API key" in err.value.details()


def test_extra_servicers_see_the_tenant_of_the_key(gateway: GatewayThread):
    with grpc.insecure_channel(gateway.address) as channel:
        whoami = channel.unary_unary(WHOAMI)
        for key, tenant in ((API_KEY, TENANT), (OTHER_KEY, OTHER_TENANT)):
            assert whoami(b"", metadata=(("x-api-key", key),), timeout=5) == (
                tenant.encode()
            )
        with pytest.raises(grpc.RpcError) as err:
            whoami(b"", timeout=5)
    assert _code(err.value) == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_key_and_reports_every_service(gateway: GatewayThread):
    with grpc.insecure_channel(gateway.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", PREDICT_SERVICE, "test.Tenant"):
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_an_invalid_structure_is_invalid_argument_naming_index_and_reason(
    client: EquiserveClient,
):
    bad = si_cell()
    bad.positions[3] = bad.positions[2] + 0.1
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell(), si_cell(), bad], model="fake")
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "structure 2" in err.value.details()
    assert "atoms_too_close" in err.value.details()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda a: a.set_atomic_numbers([92] * len(a)), "unknown_element"),
        (lambda a: a.positions.__setitem__((0, 0), np.nan), "non_finite"),
        (lambda a: a.set_cell(np.zeros((3, 3))), "singular_cell"),
        (lambda a: a.extend(si_cell().repeat(3)), "too_many_atoms"),
    ],
)
def test_each_validation_rule_reaches_the_client(client, mutate, reason):
    atoms = si_cell()
    mutate(atoms)
    with pytest.raises(grpc.RpcError) as err:
        client.predict([atoms], model="fake")
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "structure 0" in err.value.details() and reason in err.value.details()


def test_malformed_arrays_are_invalid_argument(gateway: GatewayThread):
    message = structure_message(si_cell())
    del message.positions[-1]
    request = predict_pb2.PredictRequest(model="fake", structures=[message])
    with grpc.insecure_channel(gateway.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(request, metadata=(("x-api-key", API_KEY),), timeout=5)
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad_shape" in err.value.details()


def test_a_request_larger_than_one_batch_is_split_across_calls(gateway, client):
    (target,) = [t for t in _targets(gateway) if t.model == "split"]
    results = client.predict([si_cell(i) for i in range(5)], model="split")
    assert len(results) == 5 and all(isinstance(r, Result) for r in results)
    # budget 16 atoms: 8-atom cells go two by two
    assert [len(call.structures) for call in target.handle.calls] == [2, 2, 1]


def test_too_many_structures_is_invalid_argument(client: EquiserveClient):
    many = [molecule("H2O")] * (make_settings().max_structures_per_request + 1)
    with pytest.raises(grpc.RpcError) as err:
        client.predict(many, model="fake")
    assert _code(err.value) == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_or_backend_is_not_found_naming_list_models(client):
    for model, backend in (("nope", ""), ("fake", "e3nn")):
        with pytest.raises(grpc.RpcError) as err:
            client.predict([si_cell()], model=model, backend=backend)
        assert _code(err.value) == grpc.StatusCode.NOT_FOUND
        assert "ListModels" in err.value.details()


def test_an_approximate_backend_is_used_only_when_named_exactly(client):
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell()], model="approx-only")
    assert _code(err.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "approximate" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell()], model="fake", backend="cp")
    assert _code(err.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "cp:rank=8" in err.value.details()
    (named,) = client.predict([si_cell()], model="fake", backend="cp:rank=8")
    assert isinstance(named, Result)


def test_list_models_shows_exactness_and_what_is_served(client):
    models = {m.name: m for m in client.list_models().models}
    assert set(models) == {
        "fake",
        "approx-only",
        "slow",
        "broken",
        "full",
        "narrow",
        "split",
    }
    backends = {b.name: b for b in models["fake"].backends}
    assert backends["fused"].exact and backends["fused"].served
    assert not backends["cp:rank=8"].exact and backends["cp:rank=8"].served
    assert models["fake"].default_backend == "fused"
    assert models["approx-only"].default_backend == ""
    assert models["fake"].elements == [1, 6, 8, 14]


def test_a_full_replica_queue_is_resource_exhausted(client: EquiserveClient):
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell()], model="full")
    assert _code(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_in_flight_bound_is_resource_exhausted(client: EquiserveClient):
    first = threading.Thread(target=client.predict, args=([si_cell()],),
                             kwargs={"model": "narrow"})  # fmt: skip
    first.start()
    time.sleep(0.2)
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.predict([si_cell()], model="narrow")
        assert _code(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        first.join()


def test_the_deadline_propagates(client: EquiserveClient):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell()], model="slow", timeout=0.2)
    assert _code(err.value) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


def test_an_unexpected_error_is_internal(client: EquiserveClient):
    with pytest.raises(grpc.RpcError) as err:
        client.predict([si_cell()], model="broken")
    assert _code(err.value) == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in err.value.details()


def test_the_message_size_limit_is_configurable():
    async def table() -> TargetTable:
        return _table()

    small = GatewayThread(make_settings(max_message_bytes=4096), table)
    try:
        client = EquiserveClient(small.address, api_key=API_KEY, timeout=5)
        with client, pytest.raises(grpc.RpcError) as err:
            client.predict([si_cell()] * 20, model="fake")
        assert _code(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        small.stop()


def test_shutdown_reports_not_serving_and_drains_in_flight_calls():
    async def table() -> TargetTable:
        return _table()

    gateway = GatewayThread(make_settings(), table)
    channel = grpc.insecure_channel(gateway.address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    outcome: list[object] = []
    client = EquiserveClient(gateway.address, api_key=API_KEY, timeout=10)
    slow = threading.Thread(
        target=lambda: outcome.append(client.predict([si_cell()], model="slow"))
    )
    slow.start()
    time.sleep(0.3)
    try:
        gateway.stop(grace=3.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        slow.join()
        channel.close()
        client.close()
    assert outcome and isinstance(outcome[0], list)  # the in-flight call finished
