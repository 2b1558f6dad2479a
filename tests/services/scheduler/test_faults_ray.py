"""Campaigns on a real local Ray Serve: faults end with exactly one result each.

A SevenNet-0 deployment of its own (application ``campaign-faults``), the
scheduler actor, and the campaign service on a loopback gRPC server. Each test
breaks one piece mid-campaign (a model replica, the scheduler actor, the gRPC
server) and checks that the campaign completes with one result per structure.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.build import bulk

from services.cli.campaigns import CampaignClient, RelaxOptions
from services.scheduler.local import LocalCampaignServer
from services.scheduler.scheduler import SchedulerConfig

pytestmark = pytest.mark.ray

APP = "campaign-faults"
MODEL, BACKEND = "sevennet-0", "fused"
KEY, TENANT = "fault-key", "faults"
WAIT_S = 240.0


@pytest.fixture(scope="module")
def app(ray_cluster: Any) -> Iterator[str]:
    from ray import serve

    from services.config import DeploymentConfig, ReplicaOptions
    from services.deployments.app import build_app

    options = ReplicaOptions(num_cpus=0.5, torch_threads=1, device="cpu")
    serve.run(
        build_app(DeploymentConfig(MODEL, BACKEND), options, 10_000),
        name=APP,
        route_prefix=None,
    )
    yield APP
    serve.delete(APP)


@pytest.fixture
def campaigns(app: str, tmp_path: Path) -> Iterator[tuple[LocalCampaignServer, Any]]:
    import ray

    from services.scheduler.ray_backend import ActorBackend, launch

    config = SchedulerConfig(
        data_dir=tmp_path / "data", chunk_size=4, max_in_flight=2, max_attempts=6,
        retry_delay_s=2.0, poll_interval_s=0.1,
    )  # fmt: skip
    name = f"scheduler-{uuid.uuid4().hex[:8]}"
    actor = launch(config, {(MODEL, BACKEND): app}, name=name)
    server = LocalCampaignServer(
        None, None, {KEY: TENANT}, lambda m, b: None, backend=ActorBackend(actor)
    )
    with server:
        yield server, actor
    ray.kill(actor, no_restart=True)


def _structures(n: int) -> list[Any]:
    frames = []
    for k in range(n):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.rattle(0.03, seed=k)
        atoms.info["id"] = f"si{k}"
        frames.append(atoms)
    return frames


def _wait_for(client: CampaignClient, campaign_id: str, done: int) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            c = client.get(campaign_id)
            if c.succeeded + c.failed >= done:
                return c
        except Exception:  # the scheduler may be restarting: UNAVAILABLE
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{campaign_id} did not reach {done} results in {WAIT_S} s")


def _most_attempts(server: LocalCampaignServer, tmp_path: Path) -> int:
    """The most tries any work unit took (read from the store's SQLite file)."""
    with sqlite3.connect(tmp_path / "data" / "campaigns.sqlite") as db:
        (attempts,) = db.execute("SELECT MAX(attempts) FROM es_tasks").fetchone()
    return int(attempts)


def _exactly_once(client: CampaignClient, campaign_id: str, n: int) -> None:
    c = _wait_for(client, campaign_id, n)
    table = client.fetch(campaign_id)
    assert (c.total, c.succeeded, c.failed) == (n, n, 0), c
    assert table.column("index").to_pylist() == list(range(n))
    assert np.isfinite(table.column("energy").to_numpy()).all()


def test_a_relaxation_campaign_runs_through_serve(
    campaigns: tuple[LocalCampaignServer, Any],
) -> None:
    server, _ = campaigns
    with CampaignClient(server.address, KEY) as client:
        c = client.submit("relax", MODEL, BACKEND, "relax", RelaxOptions(0.05, 50))
        client.upload(c.id, _structures(4))
        _exactly_once(client, c.id, 4)
        rows = client.fetch(c.id).to_pylist()
    assert all(r["converged"] and r["steps"] > 0 for r in rows)


def test_a_killed_model_replica_costs_a_retry_not_a_result(
    campaigns: tuple[LocalCampaignServer, Any], tmp_path: Path
) -> None:
    import ray

    server, _ = campaigns
    n = 24
    with CampaignClient(server.address, KEY) as client:
        c = client.submit("replica", MODEL, BACKEND, "relax", RelaxOptions(0.01, 60))
        client.upload(c.id, _structures(n))
        before = _wait_for(client, c.id, 4)
        assert before.succeeded < n
        replicas = [
            a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA") and APP in a["name"]
        ]  # fmt: skip
        assert replicas, "no replica of the campaign app found"
        for a in replicas:
            ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]))
        _exactly_once(client, c.id, n)
    assert _most_attempts(server, tmp_path) > 1


def test_a_killed_scheduler_restarts_and_resumes(
    campaigns: tuple[LocalCampaignServer, Any], tmp_path: Path
) -> None:
    import ray

    server, actor = campaigns
    n = 32
    with CampaignClient(server.address, KEY) as client:
        c = client.submit("scheduler", MODEL, BACKEND, "relax", RelaxOptions(0.01, 60))
        client.upload(c.id, _structures(n))
        before = _wait_for(client, c.id, 4)
        assert before.succeeded < n
        ray.kill(actor, no_restart=False)
        _exactly_once(client, c.id, n)
    assert _most_attempts(server, tmp_path) > 1


def test_a_restarted_gateway_resumes_its_stream(
    campaigns: tuple[LocalCampaignServer, Any],
) -> None:
    server, _ = campaigns
    n = 16
    with CampaignClient(server.address, KEY) as client:
        c = client.submit("gateway", MODEL, BACKEND)
        client.upload(c.id, _structures(n))
        first = []
        for result in client.stream(c.id, follow=True):
            first.append(result)
            if len(first) == 4:
                break
    server.restart_server()
    with CampaignClient(server.address, KEY) as client:
        rest = list(client.stream(c.id, offset=len(first), follow=True))
        _exactly_once(client, c.id, n)
    indices = sorted(r.result.index for r in first + rest)
    assert indices == list(range(n))
