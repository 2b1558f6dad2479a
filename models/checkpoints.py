"""Load SevenNet checkpoints shipped inside the installed ``sevenn`` wheel.

Only the files named in :data:`SHIPPED` are read, with ``torch.load(weights_only=True)``
and an allowlist of the numpy types their configs contain: nothing else is unpickled
and no code from ``sevenn`` runs. Their state dicts are mapped onto
:class:`~models.sevennet.SevenNet` by name.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from e3nn import o3

from models.sevennet import SevenNet, SevenNetConfig
from models.tp import ConvSpec

logger = logging.getLogger(__name__)

# model name -> checkpoint path inside the sevenn package
_PRETRAINED = "pretrained_potentials"
SHIPPED = {
    "sevennet-0": f"{_PRETRAINED}/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
    "sevennet-l3i5": f"{_PRETRAINED}/SevenNet_l3i5/checkpoint_l3i5.pth",
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or of an unsupported kind."""


def checkpoint_path(name: str) -> Path:
    """Where the installed ``sevenn`` wheel keeps the checkpoint of ``name``."""
    spec = importlib.util.find_spec("sevenn")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the sevenn package is not installed; it ships the SevenNet weights "
            "(run `make venv`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SHIPPED[name]
    if not path.is_file():
        raise CheckpointError(f"checkpoint for {name!r} not found at {path}")
    return path


def _safe_globals() -> list[Any]:
    import numpy.dtypes as dtypes

    multiarray = np._core.multiarray  # type: ignore[attr-defined]
    allowed: list[Any] = [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        (np.dtype, "numpy.dtype"),
        torch.device,
    ]
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def read_checkpoint(name: str) -> dict[str, Any]:
    """The raw checkpoint dictionary (``config`` and ``model_state_dict``)."""
    path = checkpoint_path(name)
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def config_from_checkpoint(raw: dict[str, Any]) -> SevenNetConfig:
    """Translate a SevenNet config, refusing variants this library does not build."""
    cfg = raw["config"]
    expected = {
        "is_parity": False,
        "interaction_type": "nequip",
        "self_connection_type": "linear",
        "use_bias_in_linear": False,
        "readout_as_fcn": False,
        "act_radial": "silu",
    }
    for key, value in expected.items():
        if cfg.get(key, value) != value:
            raise CheckpointError(
                f"unsupported SevenNet variant: {key}={cfg.get(key)!r}, "
                f"this library builds {key}={value!r}"
            )
    if cfg["radial_basis"]["radial_basis_name"] != "bessel":
        raise CheckpointError("only the Bessel radial basis is supported")
    cut = cfg["cutoff_function"]
    envelope = (
        ("XPLOR", float(cut["cutoff_on"]))
        if cut["cutoff_function_name"] == "XPLOR"
        else ("poly_cut", float(cut.get("poly_cut_p_value", 6)))
    )
    type_map = cfg["_type_map"]
    species = tuple(z for z, _ in sorted(type_map.items(), key=lambda kv: kv[1]))
    return SevenNetConfig(
        species=tuple(int(z) for z in species),
        cutoff=float(cfg["cutoff"]),
        num_basis=int(cfg["radial_basis"]["bessel_basis_num"]),
        envelope=envelope,
        irreps=tuple(str(o3.Irreps(i)) for i in cfg["irreps_manual"]),
        radial_hidden=tuple(int(h) for h in cfg["weight_nn_hidden_neurons"]),
    )


def _version(raw: dict[str, Any]) -> tuple[int, ...]:
    text = str(raw["config"].get("version", "0.0.0"))
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def _sorted_radial_weights(
    model: SevenNet, t: int, weight: torch.Tensor, state: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Reorder an old (< 0.11) checkpoint's last weight-net layer to sorted paths.

    Old SevenNet laid out the weight-net outputs in path-creation order, and some old
    Wigner-3j constants had the opposite sign to e3nn's current ones; a flipped
    constant is absorbed into the path's weights.
    """
    spec = model.interactions[t].spec
    creation = _creation_order(spec)
    blocks: list[torch.Tensor | None] = [None] * len(spec.instructions)
    start = 0
    for k_sorted in creation:
        i1 = spec.instructions[k_sorted][0]
        mul = spec.irreps_in1[i1].mul
        block = weight[:, start : start + mul]
        start += mul
        l1, l2, l3 = spec.path_degrees()[k_sorted]
        key = (
            f"{t}_convolution.convolution._compiled_main_left_right._w3j_{l1}_{l2}_{l3}"
        )
        if key in state and l1 > 0 and l2 > 0 and l3 > 0:
            current = o3.wigner_3j(l1, l2, l3).to(state[key].dtype)
            if torch.allclose(state[key], -current, atol=1e-6):
                block = -block
        blocks[k_sorted] = block
    return torch.cat([b for b in blocks if b is not None], dim=1)


def _creation_order(spec: ConvSpec) -> list[int]:
    """Sorted index of each instruction, listed in SevenNet's creation order."""
    order = []
    by_key = {ins: k for k, ins in enumerate(spec.instructions)}
    for i1, (_, ir1) in enumerate(spec.irreps_in1):
        for i2, (_, ir2) in enumerate(spec.irreps_in2):
            for ir_out in ir1 * ir2:
                if ir_out.l > spec.irreps_out.lmax:
                    continue
                matches = [
                    k
                    for (a, b, c), k in by_key.items()
                    if a == i1
                    and b == i2
                    and spec.irreps_out[c].ir == ir_out
                    and k not in order
                ]
                order.append(matches[0])
    return order


def state_dict_for(model: SevenNet, raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map a SevenNet state dict onto :class:`SevenNet`'s parameter names."""
    src = raw["model_state_dict"]
    old = _version(raw) < (0, 11, 0)
    out: dict[str, torch.Tensor] = {
        "radial.basis.coeffs": src["edge_embedding.basis_function.coeffs"],
        "embedding.weight": src["onehot_to_feature_x.linear.weight"],
        "readout_1.weight": src["reduce_input_to_hidden.linear.weight"],
        "readout_2.weight": src["reduce_hidden_to_energy.linear.weight"],
        "shift": src["rescale_atomic_energy.shift"],
        "scale": src["rescale_atomic_energy.scale"],
    }
    for t, layer in enumerate(model.interactions):
        p = f"layers.{t}."
        out[p + "self_connection.weight"] = src[
            f"{t}_self_connection_intro.linear.weight"
        ]
        out[p + "linear_1.weight"] = src[f"{t}_self_interaction_1.linear.weight"]
        out[p + "linear_2.weight"] = src[f"{t}_self_interaction_2.linear.weight"]
        out[p + "denominator"] = src[f"{t}_convolution.denominator"].reshape(())
        n_mlp = len(layer.radial_mlp)
        for k in range(n_mlp):
            w = src[f"{t}_convolution.weight_nn.layer{k}.weight"]
            if old and k == n_mlp - 1:
                w = _sorted_radial_weights(model, t, w, src)
            out[p + f"radial_mlp.layer{k}.weight"] = w
    return out


def load_sevennet(name: str, backend: str = "e3nn") -> SevenNet:
    """Build :class:`SevenNet` with the shipped weights of ``name``."""
    raw = read_checkpoint(name)
    model = SevenNet(config_from_checkpoint(raw), backend=backend)
    wanted = state_dict_for(model, raw)
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    own = {k for k, _ in model.named_parameters()} | {
        k for k, _ in model.named_buffers() if k in wanted
    }
    not_loaded = sorted(set(missing) & own)
    if not_loaded or unexpected:
        raise CheckpointError(
            f"checkpoint {name!r} does not fit the architecture: "
            f"missing {not_loaded[:5]}, unexpected {unexpected[:5]}"
        )
    model.adopt_backend_weight_order()
    logger.info("loaded %s (sevenn config version %s)", name, raw["config"]["version"])
    return model.eval()
