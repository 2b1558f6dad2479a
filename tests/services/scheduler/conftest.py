"""Fixtures of the scheduler tests: a store on SQLite and (marked) on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.scheduler.store import Store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL; PostgreSQL tests get their own table prefix, dropped after."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/campaigns.sqlite"
        return
    prefix = f"t{uuid.uuid4().hex[:12]}_"
    request.node.table_prefix = prefix
    yield f"{POSTGRES_URL}#{prefix}"
    Store(POSTGRES_URL, prefix).drop_tables()
