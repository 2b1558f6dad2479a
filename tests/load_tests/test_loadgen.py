"""The load generator: loopback only, bounded, and its figures add up."""

from __future__ import annotations

import asyncio
import json

import pytest
from fake_services import FakeCampaigns, FakePredict, serve_and_run

from load_tests.loadgen import (
    LoadConfig,
    NonLoopbackTargetError,
    Tenant,
    ensure_loopback,
    main,
    run_scenario,
    silicon_cells,
)

TENANTS = (Tenant("tenant-a", "key-a"), Tenant("tenant-b", "key-b"))


@pytest.mark.parametrize(
    "target", ["127.0.0.1:50051", "localhost:1", "[::1]:50051", "127.3.4.5:9"]
)
def test_loopback_targets_are_accepted(target):
    host, port = ensure_loopback(target)
    assert port > 0 and host


@pytest.mark.parametrize(
    "target", ["10.0.0.1:50051", "192.168.1.2:80", "[2001:db8::1]:50051", "0.0.0.0:1"]
)
def test_non_loopback_targets_are_refused(target):
    with pytest.raises(NonLoopbackTargetError, match="loopback"):
        ensure_loopback(target)


@pytest.mark.parametrize("target", ["127.0.0.1", "127.0.0.1:http", ":50051"])
def test_malformed_targets_are_refused(target):
    with pytest.raises(ValueError, match="host:port"):
        ensure_loopback(target)


def test_the_command_line_refuses_a_remote_target_before_any_call(tmp_path):
    with pytest.raises(NonLoopbackTargetError):
        main(["--target", "10.1.2.3:50051", "--api-key", "a:k", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("field", "value"), [("max_calls", 0), ("duration_s", 0.0), ("concurrency", 0)]
)
def test_unbounded_or_empty_configs_are_refused(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        LoadConfig(target="127.0.0.1:1", tenants=TENANTS, **{field: value})


def test_silicon_cells_have_the_asked_size_and_differ():
    cells = silicon_cells(3, 64, seed=1)
    assert [len(c.atomic_numbers) for c in cells] == [64, 64, 64]
    assert cells[0].positions != cells[1].positions
    with pytest.raises(ValueError, match="8 x a cube"):
        silicon_cells(1, 10, seed=0)


def test_small_scenario_stops_at_max_calls_and_counts_errors_by_code():
    fake = FakePredict(fail_every=5)

    async def body(target):
        config = LoadConfig(target, TENANTS[:1], max_calls=50, concurrency=4)
        return await run_scenario("small", config)

    summary, _ = asyncio.run(serve_and_run(fake, None, body))
    assert summary.calls == 50 == fake.calls
    assert summary.errors_by_code == {"RESOURCE_EXHAUSTED": 10}
    assert summary.ok == 40 and summary.structures_ok == 40
    assert summary.atoms_ok == 40 * 8
    lat = summary.latency_ms
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]


def test_a_wrong_key_is_reported_as_unauthenticated():
    async def body(target):
        config = LoadConfig(target, (Tenant("x", "wrong"),), max_calls=3)
        return await run_scenario("small", config)

    summary, _ = asyncio.run(serve_and_run(FakePredict(), None, body))
    assert summary.errors_by_code == {"UNAUTHENTICATED": 3}


def test_a_scenario_stops_at_its_duration():
    fake = FakePredict(delay_s=0.05)

    async def body(target):
        config = LoadConfig(
            target, TENANTS[:1], max_calls=100_000, duration_s=0.5, concurrency=2
        )
        return await run_scenario("small", config)

    summary, _ = asyncio.run(serve_and_run(fake, None, body))
    # 2 callers x 0.5 s / 0.05 s per call, plus the calls already started
    assert 10 <= summary.calls <= 24
    assert summary.wall_s < 2.0


def test_tenants_scenario_reports_every_tenant():
    fake = FakePredict()

    async def body(target):
        config = LoadConfig(target, TENANTS, max_calls=40, concurrency=2)
        return await run_scenario("tenants", config)

    summary, _ = asyncio.run(serve_and_run(fake, None, body))
    assert set(summary.per_tenant) == {"tenant-a", "tenant-b"}
    assert [summary.per_tenant[t]["calls"] for t in ("tenant-a", "tenant-b")] == [
        20,
        20,
    ]
    assert sorted(set(fake.tenants)) == ["tenant-a", "tenant-b"]


def test_tenants_scenario_needs_two_keys():
    async def body(target):
        return await run_scenario("tenants", LoadConfig(target, TENANTS[:1]))

    with pytest.raises(ValueError, match="two API keys"):
        asyncio.run(serve_and_run(FakePredict(), None, body))


def test_campaign_scenario_uploads_in_chunks_and_watches_to_completion():
    fake = FakeCampaigns(per_poll=700)

    async def body(target):
        config = LoadConfig(
            target, TENANTS[:1], campaign_structures=1200, campaign_chunk=500
        )
        return await run_scenario("campaign", config)

    summary, records = asyncio.run(serve_and_run(None, fake, body))
    assert fake.appended_first == [0, 500, 1000]
    extra = summary.extra
    assert extra["state"] == "CAMPAIGN_STATE_COMPLETED"
    assert extra["succeeded"] == 1200 == summary.structures_ok
    assert [p[1] for p in extra["progress"]] == [700, 1200]
    assert len(records) == 3 and summary.errors_by_code == {}


def test_command_line_writes_json_and_png(tmp_path):
    async def body(target):
        return await asyncio.to_thread(
            main,
            ["--target", target, "--api-key", "tenant-a:key-a", "--scenario",
             "small", "--max-calls", "20", "--out", str(tmp_path)],
        )  # fmt: skip

    assert asyncio.run(serve_and_run(FakePredict(), None, body)) == 0
    report = json.loads((tmp_path / "loadtest.json").read_text())
    assert report["runs"][0]["calls"] == 20
    assert (tmp_path / "loadtest.png").read_bytes()[:4] == b"\x89PNG"


def test_campaign_scenario_reports_a_gateway_without_campaigns():
    async def body(target):
        return await run_scenario("campaign", LoadConfig(target, TENANTS[:1]))

    summary, _ = asyncio.run(serve_and_run(FakePredict(), None, body))
    assert summary.errors_by_code == {"UNIMPLEMENTED": 1}
    assert summary.extra["state"] == "not_run"
