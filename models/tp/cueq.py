"""NVIDIA cuEquivariance's channel-wise tensor product as an exact backend.

``cuequivariance_torch.ChannelWiseTensorProduct`` computes the same ``uvu`` paths
as e3nn with the same normalisation ("component" irreps, "element" paths) and the
same ``mul_ir`` layout; on CPU it runs its pure-PyTorch ("naive") method, on CUDA
its kernels. It enumerates every ``(i1, i2, ir_out)`` path whose output irrep is
allowed and sorts them by output irrep; this module maps the spec's instructions
onto those paths (weights scattered in, outputs gathered out), so any
:class:`~models.tp.base.ConvSpec` works.

Where the package is missing, constructing the backend raises
:class:`BackendUnavailableError` naming the reason, and tests skip with it.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, cast

import torch

from models.tp.base import ConvSpec, TPBackend, register_backend
from models.tp.blocks import check_inputs

logger = logging.getLogger(__name__)


class BackendUnavailableError(RuntimeError):
    """A backend whose library or device is not present on this machine."""


def cueq_unavailable_reason() -> str | None:
    """Why the cueq backend cannot run here, or ``None`` if it can."""
    try:
        _import_cueq()
    except ImportError as err:
        return f"cuequivariance-torch is not importable ({err})"
    return None


def _import_cueq() -> tuple[ModuleType, ModuleType]:
    cue = importlib.import_module("cuequivariance")
    cuet = importlib.import_module("cuequivariance_torch")
    return cue, cuet


@register_backend
class CueqTP(TPBackend):
    """``cuequivariance_torch.ChannelWiseTensorProduct`` behind the backend interface.

    Options:
        method: cuEquivariance execution method; default ``"naive"`` (pure PyTorch)
            on CPU. Pass ``method=uniform_1d`` for the CUDA kernel on a GPU.
    """

    name = "cueq"
    exact = True

    def __init__(self, spec: ConvSpec, method: str = "naive", **options: Any) -> None:
        super().__init__(spec, **options)
        try:
            cue, cuet = _import_cueq()
        except ImportError as err:
            raise BackendUnavailableError(
                f"backend 'cueq' not available here: cuequivariance-torch is not "
                f"importable ({err}); install cuequivariance-torch==0.13.0"
            ) from err
        for mul, _ in spec.irreps_in2:
            if mul != 1:
                raise ValueError(
                    f"backend 'cueq' needs multiplicity 1 in irreps_in2, got "
                    f"{spec.irreps_in2}"
                )
        allowed = sorted({ir for _, ir in spec.irreps_out})
        self.tp = cuet.ChannelWiseTensorProduct(
            cue.Irreps("O3", str(spec.irreps_in1)),
            cue.Irreps("O3", str(spec.irreps_in2)),
            [cue.O3(ir.l, ir.p) for ir in allowed],
            layout=cue.mul_ir,
            shared_weights=False,
            internal_weights=False,
            dtype=torch.float64,
            method=method,
        )
        self._build_maps(cue)

    def _build_maps(self, cue: ModuleType) -> None:
        """Index maps between the spec's instructions and cuEquivariance's paths."""
        spec = self.spec
        allowed = {(ir.l, ir.p) for _, ir in spec.irreps_out}
        raw: list[tuple[int, int, tuple[int, int]]] = []
        for i1, (_, ir1) in enumerate(spec.irreps_in1):
            for i2, (_, ir2) in enumerate(spec.irreps_in2):
                for ir3 in cue.O3(ir1.l, ir1.p) * cue.O3(ir2.l, ir2.p):
                    if (ir3.l, ir3.p) in allowed:
                        raw.append((i1, i2, (ir3.l, ir3.p)))
        raw_irreps = cue.Irreps(
            "O3", [(spec.irreps_in1[i1].mul, cue.O3(*ir)) for i1, _, ir in raw]
        )
        perm = raw_irreps.sort().perm  # raw path -> sorted position
        position = {key: perm[p] for p, key in enumerate(raw)}

        # columns of cue's weights and outputs, per sorted path
        sorted_mul = [0] * len(raw)
        for p, (i1, _, ir) in enumerate(raw):
            sorted_mul[perm[p]] = spec.irreps_in1[i1].mul * (2 * ir[0] + 1)
        w_start, o_start, w_acc, o_acc = [], [], 0, 0
        for pos in range(len(raw)):
            w_start.append(w_acc)
            o_start.append(o_acc)
            mul = spec.irreps_in1[raw[_inverse(perm)[pos]][0]].mul
            w_acc += mul
            o_acc += sorted_mul[pos]
        self._cue_weight_numel = w_acc

        w_index: list[int] = []
        o_index: list[int] = []
        for i1, i2, io in spec.instructions:
            ir = spec.irreps_out[io].ir
            pos = position[(i1, i2, (ir.l, ir.p))]
            mul = spec.irreps_in1[i1].mul
            w_index.extend(range(w_start[pos], w_start[pos] + mul))
            o_index.extend(range(o_start[pos], o_start[pos] + mul * ir.dim))
        identity = w_index == list(range(w_acc)) and o_index == list(range(o_acc))
        self._identity = identity
        self.register_buffer("w_index", torch.tensor(w_index, dtype=torch.long), False)
        self.register_buffer("o_index", torch.tensor(o_index, dtype=torch.long), False)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`; shapes ``(E, in1.dim)``, ``(E, in2.dim)``,
        ``(E, weight_numel)`` -> ``(E, out.dim)``."""
        check_inputs(self.spec, x, y, w)
        if self._identity:
            out: torch.Tensor = self.tp(x, y, w)
            return out
        w_cue = w.new_zeros((w.shape[0], self._cue_weight_numel))
        w_index = cast(torch.Tensor, self.w_index)
        o_index = cast(torch.Tensor, self.o_index)
        w_cue[:, w_index] = w
        full: torch.Tensor = self.tp(x, y, w_cue)
        return full.index_select(1, o_index)


def _inverse(perm: tuple[int, ...]) -> list[int]:
    inv = [0] * len(perm)
    for p, pos in enumerate(perm):
        inv[pos] = p
    return inv
