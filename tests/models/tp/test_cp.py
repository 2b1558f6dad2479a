"""cp: exact at its rank limit, error falling with rank, factors cached on disk."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from models.tp import cp
from models.tp.blocks import group_by_first_input
from models.tp.checks import (
    equivariance_error,
    random_inputs,
    reference_output,
    relative_error,
)
from models.tp.cp import CPTP
from tests.models.tp.conftest import many_to_many_spec, sevennet_like_spec

ROUND_OFF = 1e-10
N_EDGES = 6
# ranks below every block's limit (9, 27, 45 for SevenNet's blocks), then above it
TREND_RANKS = (2, 8, 24, 64)


def test_rank_at_the_limit_reproduces_the_cg_product() -> None:
    spec = sevennet_like_spec()
    x, y, w = random_inputs(spec, N_EDGES)
    backend = CPTP(spec, rank=64)
    assert backend.relative_error == 0.0
    torch.testing.assert_close(
        backend(x, y, w), reference_output(spec, x, y, w), atol=1e-12, rtol=1e-10
    )


def test_output_and_equivariance_errors_fall_as_the_rank_grows() -> None:
    spec = sevennet_like_spec()
    x, y, w = random_inputs(spec, N_EDGES)
    expected = reference_output(spec, x, y, w)
    output_errors, equivariance_errors = [], []
    for rank in TREND_RANKS:
        backend = CPTP(spec, rank=rank)
        output_errors.append(relative_error(backend(x, y, w), expected))
        equivariance_errors.append(equivariance_error(backend))

    assert all(a > b for a, b in itertools.pairwise(output_errors)), output_errors
    assert output_errors[0] > 0.5 and output_errors[-1] < ROUND_OFF
    assert equivariance_errors[0] > 1e-3, equivariance_errors
    assert equivariance_errors[-1] < ROUND_OFF, equivariance_errors


def test_fit_reaches_the_tolerance_on_a_low_rank_tensor() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(s, 4, generator=gen, dtype=torch.float64) for s in (5, 6, 7))
    factors = cp.fit_cp(cp.cp_reconstruct(a, b, c), rank=4, tol=1e-6, max_iter=2000)
    assert factors.relative_error <= 1e-6


def test_exact_factors_reconstruct_the_tensor() -> None:
    spec = many_to_many_spec(2)
    group = group_by_first_input(spec, [True] * len(spec.instructions))[1]
    m = cp.group_tensor(spec, group)
    f = cp.exact_factors(m)
    assert f.a.shape[1] == cp.rank_limit(tuple(m.shape))  # type: ignore[arg-type]
    torch.testing.assert_close(cp.cp_reconstruct(f.a, f.b, f.c), m, atol=1e-14, rtol=0)


def test_fit_is_deterministic() -> None:
    m = cp.group_tensor(
        sevennet_like_spec(), group_by_first_input(sevennet_like_spec(), [True] * 15)[2]
    )
    first = cp.fit_cp(m, rank=6, max_iter=50)
    second = cp.fit_cp(m, rank=6, max_iter=50)
    assert torch.equal(first.a, second.a) and torch.equal(first.c, second.c)


def test_second_build_loads_the_cache_without_fitting(
    cp_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = sevennet_like_spec()
    first = CPTP(spec, rank=5)
    assert first.cache_file.parent == cp_cache_dir / "cp"
    assert first.cache_file.exists()
    assert not list(first.cache_file.parent.glob("*.tmp"))

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("cp refitted although the factors were cached")

    monkeypatch.setattr(cp, "fit_cp", no_fit)
    second = CPTP(spec, rank=5)
    assert second.fit_errors == first.fit_errors
    x, y, w = random_inputs(spec, N_EDGES)
    torch.testing.assert_close(second(x, y, w), first(x, y, w), atol=0, rtol=0)


def test_cache_key_depends_on_rank_and_irreps() -> None:
    a = cp.cache_key(sevennet_like_spec(), 8, cp.DEFAULT_TOL, cp.DEFAULT_MAX_ITER)
    b = cp.cache_key(sevennet_like_spec(), 16, cp.DEFAULT_TOL, cp.DEFAULT_MAX_ITER)
    c = cp.cache_key(many_to_many_spec(2), 8, cp.DEFAULT_TOL, cp.DEFAULT_MAX_ITER)
    assert len({a, b, c}) == 3


def test_prefit_writes_one_file_per_spec_and_rank(cp_cache_dir: Path) -> None:
    files = cp.prefit([sevennet_like_spec(), sevennet_like_spec()], ranks=[3, 4])
    assert len(files) == 2 and all(f.exists() for f in files)


@pytest.mark.parametrize("rank", [0, -1, None, 2.5])
def test_bad_rank_is_refused_with_an_example(rank: object) -> None:
    with pytest.raises(ValueError, match="cp:rank=32"):
        CPTP(sevennet_like_spec(), rank=rank)  # type: ignore[arg-type]


def test_prefit_command_fills_the_cache_for_every_sevennet_layer(
    cp_cache_dir: Path,
) -> None:
    from models.registry import get_spec
    from models.tp import cp_prefit

    assert cp_prefit.main(["--model", "sevennet-0", "--rank", "3"]) == 0
    for spec in get_spec("sevennet-0").conv_specs:
        key = cp.cache_key(spec, 3, cp.DEFAULT_TOL, cp.DEFAULT_MAX_ITER)
        assert (cp_cache_dir / "cp" / key).exists()
