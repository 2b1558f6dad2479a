"""The ``equiserve`` command against the serving gateway with the campaign service
registered through its ``extra_servicers`` hook (model handles are doubles)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ase.build import bulk
from ase.io import write

from services.cli.main import main
from services.gateway.targets import TargetTable
from services.scheduler.config import SchedulerConfig
from services.scheduler.executors import StandInExecutor
from services.scheduler.scheduler import Scheduler
from services.scheduler.servicer import add_campaign_service
from tests.services.serving_helpers import (
    API_KEY,
    OTHER_KEY,
    FakeHandle,
    GatewayThread,
    fake_target,
    make_settings,
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayThread]:
    config = SchedulerConfig(data_dir=tmp_path / "data", poll_interval_s=0.02)
    scheduler = Scheduler(config, StandInExecutor())
    hook = add_campaign_service(scheduler, check_model=lambda model, backend: None)

    async def table() -> TargetTable:
        return TargetTable([fake_target("fake", "fused", True, FakeHandle())])

    thread = GatewayThread(make_settings(), table, extra_servicers=[hook])
    thread.call(scheduler.start())
    yield thread
    thread.call(scheduler.stop())
    thread.stop()


def test_models_lists_the_served_models(
    gateway: GatewayThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--address", gateway.address, "--api-key", API_KEY, "models"]) == 0
    out = capsys.readouterr().out
    assert "fake" in out and "fused (default): exact, served" in out


def test_a_campaign_through_the_gateway_is_private_to_its_tenant(
    gateway: GatewayThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "si.extxyz"
    write(path, [bulk("Si") for _ in range(5)], format="extxyz")
    base = ["--address", gateway.address]

    assert main([*base, "--api-key", API_KEY, "submit", str(path), "--watch"]) == 0
    campaign = capsys.readouterr().out.strip().splitlines()[-1]
    assert main([*base, "--api-key", API_KEY, "results", campaign, "-o",
                 str(tmp_path / "out.csv")]) == 0  # fmt: skip
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 6

    assert main([*base, "--api-key", OTHER_KEY, "status", campaign]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
