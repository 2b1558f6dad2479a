"""Tensor-product backends: one implementation per module, registered by name."""

from __future__ import annotations

import importlib
import logging

from models.tp.base import (
    ConvSpec,
    TPBackend,
    backend_class,
    build_backend,
    known_backends,
    parse_backend,
    register_backend,
)

logger = logging.getLogger(__name__)

# Modules that register a backend on import. A module whose optional dependency is
# missing (cuEquivariance, say) is skipped with a log line, never an import error.
_BUILTIN_MODULES = (
    "models.tp.e3nn_backend",
    "models.tp.fused",
    "models.tp.gaunt_fourier",
    "models.tp.gaunt_grid",
    "models.tp.cp",
    "models.tp.cueq",
)
_loaded = False


def load_builtin_backends() -> None:
    """Import every built-in backend module once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                logger.info("backend module %s unavailable: %s", module, err)


__all__ = [
    "ConvSpec",
    "TPBackend",
    "backend_class",
    "build_backend",
    "known_backends",
    "load_builtin_backends",
    "parse_backend",
    "register_backend",
]
