"""The tabulated radial networks equal the MLPs to float32 precision."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models

TABLE_REL_TOL = 1e-6  # relative to each layer's largest weight


@pytest.mark.parametrize("name", ["sevennet-0", "sevennet-l3i5"])
def test_table_matches_mlp_values_and_derivatives(name: str) -> None:
    module = models.load_model(name, backend="e3nn", dtype="float64").module
    module.tabulate_radial()
    r = torch.linspace(0.6, 4.999, 2001, dtype=torch.float64, requires_grad=True)
    for layer, table in zip(module.interactions, module.radial_tables, strict=True):
        mlp = nn.Sequential(module.radial, layer.radial_mlp)
        exact, approx = mlp(r), table(r)
        scale = exact.abs().max()
        assert (exact - approx).abs().max() / scale < TABLE_REL_TOL
        probe = torch.randn_like(exact)
        (g_exact,) = torch.autograd.grad((exact * probe).sum(), r)
        (g_approx,) = torch.autograd.grad((approx * probe).sum(), r)
        rel = (g_exact - g_approx).abs().max() / g_exact.abs().max()
        assert rel < 1e3 * TABLE_REL_TOL  # the derivative converges one order slower


def test_tabulated_model_matches_the_mlp_model_in_float32() -> None:
    from tests.models.structures import parity_set

    frames = list(parity_set().values())
    exact = models.load_model("sevennet-0", backend="fused")
    table = models.load_model("sevennet-0", backend="fused", radial_table=True)
    for atoms, a, b in zip(
        frames, exact.predict(frames), table.predict(frames), strict=True
    ):
        assert isinstance(a, models.Prediction) and isinstance(b, models.Prediction)
        assert abs(a.energy - b.energy) / len(atoms) < 2e-5
        assert float(abs(a.forces - b.forces).max()) < 2e-4
