"""The reference backend: e3nn's ``TensorProduct`` in ``uvu`` mode."""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3

from models.tp.base import ConvSpec, TPBackend, register_backend


@register_backend
class E3nnTP(TPBackend):
    """All Clebsch-Gordan paths through e3nn; the reference every backend is tested
    against."""

    name = "e3nn"
    exact = True

    def __init__(self, spec: ConvSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        self.tp = o3.TensorProduct(
            spec.irreps_in1,
            spec.irreps_in2,
            spec.irreps_out,
            [(i1, i2, io, "uvu", True) for i1, i2, io in spec.instructions],
            shared_weights=False,
            internal_weights=False,
        )

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`."""
        return self.tp(x, y, w)
