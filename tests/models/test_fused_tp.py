"""The fused backend equals e3nn's product to round-off, values and gradients."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from models.tp import ConvSpec, build_backend
from models.tp.sphere import float64_default

ROUND_OFF = 1e-12
SPECS = {
    "sevennet-0 hidden layer": ("128x0e+64x1e+32x2e", 2, 2),
    "sevennet-l3i5 hidden layer": ("128x0e+64x1e+32x2e+32x3e", 3, 3),
    "scalar input": ("128x0e", 2, 2),
    "to scalars only (last layer)": ("16x0e+8x1e+4x2e", 2, 0),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fused_matches_e3nn_forward_convolve_and_gradients(name: str) -> None:
    irreps, lmax_sh, lmax_out = SPECS[name]
    with float64_default():
        spec = ConvSpec.channelwise(
            o3.Irreps(irreps), o3.Irreps.spherical_harmonics(lmax_sh, p=1), lmax_out
        )
        ref, fused = build_backend("e3nn", spec), build_backend("fused", spec)
    gen = torch.Generator().manual_seed(0)
    n_nodes, n_edges = 7, 40
    x = torch.randn(n_nodes, spec.irreps_in1.dim, generator=gen, dtype=torch.float64)
    vec = torch.randn(n_edges, 3, generator=gen, dtype=torch.float64)
    y = o3.spherical_harmonics(spec.irreps_in2, vec, True, "component")
    w = torch.randn(n_edges, spec.weight_numel, generator=gen, dtype=torch.float64)
    src = torch.randint(0, n_nodes, (n_edges,), generator=gen)
    dst = torch.randint(0, n_nodes, (n_edges,), generator=gen)

    xe = x[src]
    torch.testing.assert_close(fused(xe, y, w), ref(xe, y, w), rtol=0, atol=ROUND_OFF)

    outputs = []
    for backend in (ref, fused):
        xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = backend.convolve(xs, y, ws, src, dst, n_nodes)
        grads = torch.autograd.grad((out * out).sum(), (xs, ws))
        outputs.append((out.detach(), *grads))
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=ROUND_OFF)
