"""Model registry: name -> loader, cutoff, elements, backends and their exactness."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from models.tp import ConvSpec, backend_class, known_backends, parse_backend

logger = logging.getLogger(__name__)


class UnknownModelError(KeyError):
    """No model of that name; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown model"


class UnknownBackendError(KeyError):
    """No tensor-product backend of that name for a model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown backend"


@dataclass(frozen=True)
class BackendInfo:
    """How one backend runs one model.

    Attributes:
        name: backend name (options such as ``:rank=32`` go after it).
        exact: whether the model's numbers are reproduced to round-off.
        note: what changes when it is not exact, or why it is unavailable.
    """

    name: str
    exact: bool
    note: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """What the platform knows about a model before loading its weights.

    Attributes:
        name: registry name, e.g. ``sevennet-0``.
        version: the weights' version string.
        description: one line for humans.
        cutoff: neighbour cutoff, Å.
        elements: atomic numbers the model was trained on.
        backends: every backend and whether it is exact for this model.
        default_backend: the backend used when none is named.
    """

    name: str
    version: str
    description: str
    cutoff: float
    elements: frozenset[int]
    backends: dict[str, BackendInfo]
    default_backend: str = "fused"
    conv_specs: tuple[ConvSpec, ...] = field(default=(), repr=False)

    def backend_info(self, backend: str) -> BackendInfo:
        """Exactness of ``backend`` (``name[:options]``) for this model.

        Raises:
            UnknownBackendError: the backend does not exist.
        """
        name, _ = parse_backend(backend)
        if name not in self.backends:
            raise UnknownBackendError(
                f"model {self.name!r} has no tensor-product backend {name!r}; "
                f"available: {sorted(self.backends)}"
            )
        return self.backends[name]


def _backend_infos(specs: tuple[ConvSpec, ...]) -> dict[str, BackendInfo]:
    infos = {}
    for name in known_backends():
        cls = backend_class(name)
        dropped = sum(not c for s in specs for c in cls.covers(s))
        exact = cls.exact and dropped == 0
        note = str(getattr(cls, "note", "") or "")
        if dropped:
            note = (
                f"approximate: drops {dropped} of the model's coupling paths "
                f"(those with l1+l2+l3 odd) and rescales the rest; {note}"
            ).strip("; ")
        elif not cls.exact and not note:
            note = "approximate: not equal to the model's CG tensor product"
        infos[name] = BackendInfo(name, exact, note)
    return infos


@functools.cache
def _sevennet_spec(name: str, description: str) -> ModelSpec:
    from e3nn import o3

    from models.checkpoints import config_from_checkpoint, read_checkpoint

    raw = read_checkpoint(name)
    config = config_from_checkpoint(raw)
    sh = o3.Irreps.spherical_harmonics(config.lmax_edge, p=1)
    specs = tuple(
        ConvSpec.channelwise(
            o3.Irreps(config.irreps[t]), sh, o3.Irreps(config.irreps[t + 1]).lmax
        )
        for t in range(config.num_layers)
    )
    return ModelSpec(
        name=name,
        version=str(raw["config"].get("version", "unknown")),
        description=description,
        cutoff=config.cutoff,
        elements=frozenset(config.species),
        backends=_backend_infos(specs),
        conv_specs=specs,
    )


def _sevennet_loader(name: str) -> Callable[[str], nn.Module]:
    def load(backend: str) -> nn.Module:
        from models.checkpoints import load_sevennet

        return load_sevennet(name, backend)

    return load


_MODELS: dict[str, tuple[str, Callable[[str], nn.Module]]] = {
    "sevennet-0": (
        "SevenNet-0 (11Jul2024): universal potential, 89 elements, lmax 2",
        _sevennet_loader("sevennet-0"),
    ),
    "sevennet-l3i5": (
        "SevenNet-l3i5: universal potential, 89 elements, lmax 3",
        _sevennet_loader("sevennet-l3i5"),
    ),
}


def model_names() -> list[str]:
    """Registered model names."""
    return sorted(_MODELS)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``.

    Raises:
        UnknownModelError: not registered; the message lists what is.
    """
    if name not in _MODELS:
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {model_names()}"
        )
    description, _ = _MODELS[name]
    return _sevennet_spec(name, description)


def get_loader(name: str) -> Callable[[str], nn.Module]:
    """A function ``backend -> nn.Module`` that builds ``name`` with its weights."""
    get_spec(name)
    return _MODELS[name][1]


def list_models() -> list[ModelSpec]:
    """Specs of every registered model."""
    return [get_spec(n) for n in model_names()]
