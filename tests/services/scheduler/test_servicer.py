"""CampaignService over a real gRPC server on port 0: status codes, tenancy, streams."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from equiserve.v1 import campaigns_pb2

from services.cli.campaigns import CampaignClient, RelaxOptions
from services.client.client import structure_message
from services.scheduler.executors import StandInExecutor
from services.scheduler.local import LocalCampaignServer
from services.scheduler.scheduler import SchedulerConfig
from tests.services.scheduler.campaign_helpers import tiny_structures

KEYS = {"alice-key": "alice", "bob-key": "bob"}
WAIT_S = 30.0


def _check_model(model: str, backend: str) -> None:
    if model != "stand-in":
        from models.registry import UnknownModelError

        raise UnknownModelError(model)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalCampaignServer]:
    config = SchedulerConfig(
        data_dir=tmp_path / "data", chunk_size=5, max_in_flight=2,
        poll_interval_s=0.02, max_append=50,
    )  # fmt: skip
    with LocalCampaignServer(config, StandInExecutor(), KEYS, _check_model) as srv:
        yield srv


def _wait(client: CampaignClient, campaign_id: str) -> campaigns_pb2.Campaign:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        c = client.get(campaign_id)
        if c.state == campaigns_pb2.CAMPAIGN_STATE_COMPLETED:
            return c
        time.sleep(0.05)
    raise TimeoutError(campaign_id)


def test_submit_upload_stream_and_fetch_every_result_once(
    server: LocalCampaignServer,
) -> None:
    with CampaignClient(server.address, "alice-key") as client:
        c = client.submit("set", "stand-in", task="relax", relax=RelaxOptions(0.1))
        assert c.state == campaigns_pb2.CAMPAIGN_STATE_OPEN
        assert client.upload(c.id, tiny_structures(23), chunk_size=7) == 23
        done = _wait(client, c.id)
        streamed = list(client.stream(c.id))
        table = client.fetch(c.id)

    assert (done.total, done.succeeded, done.failed) == (23, 23, 0)
    assert done.relax.fmax == pytest.approx(0.1)
    assert sorted(r.result.index for r in streamed) == list(range(23))
    assert [r.offset for r in streamed] == list(range(23))
    assert (
        streamed[0].result.energy == -2.0 and len(streamed[0].structure.positions) == 6
    )
    assert table.column("index").to_pylist() == list(range(23))


def test_a_stream_resumes_from_an_offset_and_follows_new_results(
    server: LocalCampaignServer,
) -> None:
    with CampaignClient(server.address, "alice-key") as client:
        c = client.submit("set", "stand-in")
        client.upload(c.id, tiny_structures(12), chunk_size=12)
        _wait(client, c.id)
        first = list(client.stream(c.id))
        rest = list(client.stream(c.id, offset=7))
        followed = list(client.stream(c.id, offset=0, follow=True))

    assert [r.result.index for r in rest] == [r.result.index for r in first[7:]]
    assert len(followed) == 12


def test_another_tenant_gets_not_found_and_no_key_gets_unauthenticated(
    server: LocalCampaignServer,
) -> None:
    with CampaignClient(server.address, "alice-key") as alice:
        c = alice.submit("private", "stand-in")
    with CampaignClient(server.address, "bob-key") as bob:
        for call in (
            lambda: bob.get(c.id),
            lambda: bob.cancel(c.id),
            lambda: list(bob.stream(c.id)),
            lambda: bob.fetch(c.id),
            lambda: bob.upload(c.id, tiny_structures(1)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert bob.list() == []
    with CampaignClient(server.address, "") as anonymous:
        with pytest.raises(grpc.RpcError) as err:
            anonymous.list()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_requests_get_clear_status_codes(server: LocalCampaignServer) -> None:
    with CampaignClient(server.address, "alice-key") as client:
        with pytest.raises(grpc.RpcError) as err:
            client.submit("x", "no-such-model")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "ListModels" in (err.value.details() or "")

        c = client.submit("x", "stand-in")
        with pytest.raises(grpc.RpcError) as err:
            client.upload(c.id, tiny_structures(60), chunk_size=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "exceed the limit of 50" in (err.value.details() or "")

        with pytest.raises(grpc.RpcError) as err:
            client.submit("x", "stand-in", source="../../etc/passwd")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        (a,) = tiny_structures(1)
        client.upload(c.id, tiny_structures(3))
        # the same upload again is a retry: acknowledged, nothing stored twice
        assert client.upload(c.id, tiny_structures(3)) == 3
        more = campaigns_pb2.AppendStructuresRequest(
            campaign_id=c.id, first_index=3, structures=[structure_message(a)]
        )
        with pytest.raises(grpc.RpcError) as err:
            client.stub.AppendStructures(more, metadata=client.metadata)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not open" in (err.value.details() or "")


def test_a_restarted_gateway_loses_nothing(server: LocalCampaignServer) -> None:
    with CampaignClient(server.address, "alice-key") as client:
        c = client.submit("set", "stand-in")
        client.upload(c.id, tiny_structures(30), chunk_size=10)
    server.restart_server()
    with CampaignClient(server.address, "alice-key") as client:
        done = _wait(client, c.id)
        streamed = list(client.stream(c.id))
    assert done.succeeded == 30
    assert sorted(r.result.index for r in streamed) == list(range(30))
