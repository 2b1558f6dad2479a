"""The ``equiserve`` command against a real campaign server (stand-in model)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ase.build import bulk
from ase.io import iread, write

from services.cli.main import main
from services.scheduler.executors import StandInExecutor
from services.scheduler.local import LocalCampaignServer
from services.scheduler.scheduler import SchedulerConfig

KEY = "cli-key"


def _any_model(model: str, backend: str) -> None:
    """The stand-in executor serves whatever model is named."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalCampaignServer]:
    config = SchedulerConfig(
        data_dir=tmp_path / "data", chunk_size=4, poll_interval_s=0.02
    )
    with LocalCampaignServer(
        config, StandInExecutor(), {KEY: "cli"}, _any_model
    ) as srv:
        yield srv


@pytest.fixture
def structure_files(tmp_path: Path) -> list[Path]:
    a = [bulk("Si", "diamond", a=5.40 + 0.01 * k) for k in range(7)]
    b = [bulk("Cu", "fcc", a=3.6, cubic=True) for _ in range(3)]
    write(tmp_path / "si.extxyz", a, format="extxyz")
    write(tmp_path / "cu.extxyz", b, format="extxyz")
    return [tmp_path / "si.extxyz", tmp_path / "cu.extxyz"]


def _cli(server: LocalCampaignServer, *args: str) -> int:
    return main(["--address", server.address, "--api-key", KEY, *args])


def test_submit_watch_status_and_results_in_every_format(
    server: LocalCampaignServer,
    structure_files: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = [str(p) for p in structure_files]
    assert _cli(server, "submit", *files, "--task", "relax", "--fmax", "0.05",
                "--chunk-size", "3", "--watch") == 0  # fmt: skip
    out = capsys.readouterr()
    campaign = out.out.strip().splitlines()[-1]
    assert "uploaded 10 structures" in out.err
    assert "completed: 10 succeeded, 0 failed of 10" in out.err

    assert _cli(server, "status", campaign) == 0
    status = capsys.readouterr().out
    assert "completed" in status and "10" in status
    assert _cli(server, "status") == 0
    assert campaign in capsys.readouterr().out

    for name in ("out.extxyz", "out.parquet", "out.csv"):
        assert _cli(server, "results", campaign, "-o", str(tmp_path / name)) == 0
    frames = list(iread(tmp_path / "out.extxyz"))
    assert len(frames) == 10
    assert frames[0].get_potential_energy() == pytest.approx(-2.0)
    assert frames[0].info["id"] == "si:0"
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 10
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["formula"] for r in rows[-3:]] == ["Cu4"] * 3
    assert float(rows[0]["energy_per_atom"]) == pytest.approx(-1.0)


def test_cancel_and_errors_exit_with_a_status(
    server: LocalCampaignServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(server, "submit", "--server-file", "x.extxyz") == 2
    assert "INVALID_ARGUMENT" in capsys.readouterr().err

    assert _cli(server, "status", "nope") == 2
    assert "NOT_FOUND" in capsys.readouterr().err

    assert _cli(server, "results", "nope", "-o", "out.txt") == 2
    assert "output format" in capsys.readouterr().err

    assert main(["--address", server.address, "--api-key", "wrong", "status"]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_a_cancelled_campaign_is_reported_cancelled(
    server: LocalCampaignServer,
    structure_files: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli.campaigns import CampaignClient

    with CampaignClient(server.address, KEY) as client:
        campaign = client.submit("c", "stand-in").id
    assert _cli(server, "cancel", campaign) == 0
    assert "cancelled" in capsys.readouterr().out
    assert _cli(server, "watch", campaign) == 1
