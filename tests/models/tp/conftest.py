"""Fixtures for the tensor-product backend tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from e3nn import o3

from models.tp.base import ConvSpec

logger = logging.getLogger(__name__)

# SevenNet-0's middle interaction layer: node features x edge harmonics, l_out <= 2.
SEVENNET_IN1 = "8x0e+4x1e+2x2e"
SEVENNET_SH = "1x0e+1x1e+1x2e"


def parity_irreps(l_max: int, mul: int) -> o3.Irreps:
    """``mul x 0e + mul x 1o + mul x 2e + ...`` up to ``l_max``."""
    return o3.Irreps([(mul, (l, (-1) ** l)) for l in range(l_max + 1)])


def many_to_many_spec(l_max: int, mul: int = 2) -> ConvSpec:
    """All ``uvu`` paths from ``0..l_max`` features x ``0..l_max`` harmonics."""
    return ConvSpec.channelwise(
        parity_irreps(l_max, mul), o3.Irreps.spherical_harmonics(l_max, p=-1), l_max
    )


def sevennet_like_spec() -> ConvSpec:
    """A small-channel copy of SevenNet-0's convolution (all even parity)."""
    return ConvSpec.channelwise(o3.Irreps(SEVENNET_IN1), o3.Irreps(SEVENNET_SH), 2)


@pytest.fixture(scope="session")
def cp_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CP factor cache for the whole session (fits are shared between tests)."""
    return tmp_path_factory.mktemp("cp-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(
    cp_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Point the CP cache at the session's temporary directory, never ~/.cache."""
    monkeypatch.setenv("EQUISERVE_CACHE_DIR", str(cp_cache_dir))
    yield
