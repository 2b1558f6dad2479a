"""The public entry point of the model library: load a model, predict structures.

>>> import models
>>> model = models.load_model("sevennet-0", backend="fused")
>>> results = model.predict([ase.build.bulk("Si")])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.graph import build_batch
from models.registry import ModelSpec, get_loader, get_spec
from models.structure import (
    InvalidStructureError,
    Limits,
    Structure,
    as_structure,
    validate_structure,
)

if TYPE_CHECKING:
    from ase import Atoms

logger = logging.getLogger(__name__)

# Atoms evaluated in one forward pass by predict(); larger inputs are chunked. On a
# 2-core CPU throughput is flat from 64 to 256 atoms per pass and falls beyond
# (the edge tensors leave the cache): 1024 atoms ran at half the speed.
DEFAULT_BATCH_ATOMS = 256
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Prediction:
    """Results for one structure.

    Attributes:
        energy: total energy, eV.
        forces: ``(n_atoms, 3)`` forces, eV/Å.
        stress: ``(6,)`` stress, eV/Å^3, ASE sign and Voigt order
            (xx, yy, zz, yz, xz, xy); ``None`` for a non-periodic structure or when
            not asked for.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        return int(self.forces.shape[0])


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but no CUDA device is available; "
            "use --device cpu"
        )
    return device


class Potential:
    """A loaded model with its backend, device and dtype.

    Use :func:`load_model` to make one.
    """

    def __init__(
        self,
        spec: ModelSpec,
        module: torch.nn.Module,
        backend: str,
        device: torch.device,
        dtype: torch.dtype,
        limits: Limits,
        batch_atoms: int = DEFAULT_BATCH_ATOMS,
    ) -> None:
        self.spec = spec
        self.module = module
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.limits = limits
        self.batch_atoms = batch_atoms

    def __repr__(self) -> str:
        return (
            f"Potential({self.spec.name!r}, backend={self.backend!r}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    @property
    def exact(self) -> bool:
        """Whether this backend reproduces the model to round-off."""
        return self.spec.backend_info(self.backend).exact

    def validate(self, structure: Structure | Atoms, index: int | None = None) -> None:
        """Raise :class:`InvalidStructureError` if the model cannot evaluate it."""
        validate_structure(
            as_structure(structure), self.spec.elements, self.limits, index
        )

    def predict(
        self,
        structures: Sequence[Structure | Atoms],
        compute_stress: bool = True,
    ) -> list[Prediction | InvalidStructureError]:
        """Energy, forces and stress of every structure, batched.

        Each structure is validated first; one that fails validation or computation
        comes back as an :class:`InvalidStructureError` in its place and never spoils
        the others. Inputs are not modified.

        Args:
            structures: ASE ``Atoms`` or :class:`Structure` records.
            compute_stress: also compute stress for periodic structures.

        Returns:
            One :class:`Prediction` or :class:`InvalidStructureError` per input.
        """
        results: list[Prediction | InvalidStructureError | None] = [None] * len(
            structures
        )
        valid: list[tuple[int, Structure]] = []
        for i, item in enumerate(structures):
            s = as_structure(item)
            try:
                validate_structure(s, self.spec.elements, self.limits, i)
            except InvalidStructureError as err:
                results[i] = err
                continue
            valid.append((i, s))
        for chunk in self._chunks(valid):
            for i, res in zip(
                [i for i, _ in chunk],
                self._evaluate(chunk, compute_stress),
                strict=True,
            ):
                results[i] = res
        return [r for r in results if r is not None]

    def _chunks(
        self, items: list[tuple[int, Structure]]
    ) -> Iterator[list[tuple[int, Structure]]]:
        chunk: list[tuple[int, Structure]] = []
        atoms = 0
        for item in items:
            if chunk and atoms + item[1].n_atoms > self.batch_atoms:
                yield chunk
                chunk, atoms = [], 0
            chunk.append(item)
            atoms += item[1].n_atoms
        if chunk:
            yield chunk

    def _evaluate(
        self, chunk: list[tuple[int, Structure]], compute_stress: bool
    ) -> list[Prediction | InvalidStructureError]:
        """Evaluate a chunk; on failure split it and retry the halves."""
        try:
            done: list[Prediction | InvalidStructureError] = []
            done.extend(self.evaluate([s for _, s in chunk], compute_stress))
            return done
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if len(chunk) > 1:
                logger.warning("batch of %d failed (%s); splitting", len(chunk), err)
                half = len(chunk) // 2
                return self._evaluate(chunk[:half], compute_stress) + self._evaluate(
                    chunk[half:], compute_stress
                )
            index, s = chunk[0]
            logger.exception("structure %d failed to compute", index)
            return [
                InvalidStructureError(
                    "compute_failed", f"the model failed: {err}", index, s.label
                )
            ]

    def evaluate(
        self, structures: Sequence[Structure], compute_stress: bool = True
    ) -> list[Prediction]:
        """One forward pass over already validated structures (no checks, no
        splitting). Raises whatever the model raises."""
        graph = build_batch(structures, self.spec.cutoff).to(self.device, self.dtype)
        out = self.module(graph, forces=True, stress=compute_stress)
        energy = out["energy"].double().cpu().numpy()
        forces = out["forces"].detach().double().cpu().numpy()
        stress = (
            out["stress"].detach().double().cpu().numpy() if compute_stress else None
        )
        predictions, start = [], 0
        for k, s in enumerate(structures):
            n = s.n_atoms
            periodic = bool(np.asarray(s.pbc).any())
            predictions.append(
                Prediction(
                    energy=float(energy[k]),
                    forces=forces[start : start + n].copy(),
                    stress=stress[k].copy()
                    if stress is not None and periodic
                    else None,
                )
            )
            start += n
        return predictions


def load_model(
    name: str,
    backend: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    limits: Limits | None = None,
    radial_table: bool = False,
    batch_atoms: int = DEFAULT_BATCH_ATOMS,
) -> Potential:
    """Load a registered model with the chosen tensor-product backend.

    Args:
        name: registry name (``models.registry.model_names()``).
        backend: ``name[:options]``, e.g. ``fused``, ``e3nn``, ``cp:rank=32``;
            defaults to the model's default backend.
        device: ``cpu`` or ``cuda``.
        dtype: ``float32`` (default) or ``float64``.
        limits: per-structure bounds used by validation.
        radial_table: tabulate the radial weight networks
            (:class:`~models.radial.RadialTable`, float32 precision). Off by
            default: on this project's CPUs the MLP is faster (``make bench``
            measures both).
        batch_atoms: atoms per forward pass in :meth:`Potential.predict`.

    Raises:
        UnknownModelError, UnknownBackendError, ValueError: bad arguments, with the
            valid choices in the message.
    """
    spec = get_spec(name)
    backend = backend or spec.default_backend
    spec.backend_info(backend)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    torch_device = _resolve_device(device)
    with _default_dtype(dtype):
        module = get_loader(name)(backend)
        if radial_table:
            module.tabulate_radial()  # type: ignore[operator]
    module = module.to(torch_device, dtype).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return Potential(
        spec, module, backend, torch_device, dtype, limits or Limits(), batch_atoms
    )
