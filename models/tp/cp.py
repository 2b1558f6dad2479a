"""CP-decomposed tensor product (the TDN idea): a runtime/accuracy knob for CG models.

For every first-input irrep ``i1`` the exact Clebsch-Gordan map of its instructions
is a 3-tensor ``M[m1, j, k]`` (``j`` runs over the edge harmonics, ``k`` over the
outputs of all paths from ``i1``, each path scaled as e3nn scales it). It is
approximated by ``R`` rank-one terms, ``M ~ sum_r A[m1, r] B[j, r] C[k, r]``, so that
a path costs ``O(R)`` per channel instead of one contraction per CG entry:

    a = x_i1 @ A  (E, U, R);  b = y @ B  (E, R);  out = (a * b) @ C^T  (E, U, K)

and each path's slice of ``out`` is scaled by its per-edge weights. Because the CG
weights stay per path, the backend runs a model trained with CG weights directly;
its error is set by the rank and is not zero below the tensor's rank (``exact`` is
False). A rank at or above the limit ``min(I*J, I*K, J*K)`` uses an exact
factorisation instead of a fit.

Factors are fitted deterministically (alternating least squares from a fixed seed,
stopping at a relative RMSE of ``tol`` or after ``max_iter`` sweeps) and cached on
disk keyed by the irreps, the instructions and the fit settings, under
``$EQUISERVE_CACHE_DIR/cp`` (default ``~/.cache/equiserve/cp``), written atomically.
:func:`prefit` fills the cache ahead of time (``python -m models.tp.cp_prefit``)
so that a replica never fits at start.

TODO: the decomposition is per first-input block (channels differ per block, as in
SevenNet), not TDN's single decomposition over all irreps, and TDN's optional
path-weight sharing is not implemented: both need equal multiplicities across
blocks or a retrained model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.tp import sphere
from models.tp.base import ConvSpec, TPBackend, register_backend
from models.tp.blocks import (
    InputGroup,
    OutputAssembler,
    block_slices,
    check_inputs,
    group_by_first_input,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 500
DEFAULT_SEED = 0
N_RESTARTS = 3
# Ridge term of the ALS normal equations, relative to their largest diagonal.
ALS_RIDGE = 1e-12
# A sweep that improves the error by less than this (relative) counts as stalled.
STALL_TOL = 1e-7


@dataclass(frozen=True)
class CPFactors:
    """A rank-``R`` approximation of one 3-tensor ``M (I, J, K)``.

    Attributes:
        a: ``(I, R)``; b: ``(J, R)``; c: ``(K, R)``, float64.
        relative_error: ``||M - [[a, b, c]]|| / ||M||`` (0 for an exact one).
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    relative_error: float


def cp_reconstruct(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``sum_r a[i, r] b[j, r] c[k, r]`` as an ``(I, J, K)`` tensor."""
    return torch.einsum("ir,jr,kr->ijk", a, b, c)


def rank_limit(shape: tuple[int, int, int]) -> int:
    """A rank at which an exact factorisation always exists: ``min(IJ, IK, JK)``."""
    i, j, k = shape
    return min(i * j, i * k, j * k)


def exact_factors(m: torch.Tensor) -> CPFactors:
    """Exact factorisation of rank :func:`rank_limit`: one term per pair of indices
    along the two smallest modes."""
    shape = tuple(m.shape)
    order = sorted(range(3), key=lambda d: shape[d])  # the largest mode is kept whole
    p, q, keep = order
    mt = m.permute(p, q, keep).reshape(shape[p] * shape[q], shape[keep])
    eye_p = torch.eye(shape[p], dtype=m.dtype).repeat_interleave(shape[q], dim=1)
    eye_q = torch.eye(shape[q], dtype=m.dtype).repeat(1, shape[p])
    factors = {p: eye_p, q: eye_q, keep: mt.T.contiguous()}
    return CPFactors(factors[0], factors[1], factors[2], 0.0)


def fit_cp(
    m: torch.Tensor,
    rank: int,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    seed: int = DEFAULT_SEED,
) -> CPFactors:
    """Fit rank-``rank`` CP factors to ``m`` by alternating least squares.

    Deterministic: ``N_RESTARTS`` starts from ``seed``, ``seed + 1``, ...; the best
    is kept. Stops at a relative error ``<= tol``, after ``max_iter`` sweeps, or
    when a sweep stops improving.

    Args:
        m: ``(I, J, K)`` float64 tensor.
        rank: number of rank-one terms, ``>= 1``.

    Raises:
        ValueError: ``rank < 1``.
    """
    if rank < 1:
        raise ValueError(f"cp rank must be >= 1, got {rank}; use e.g. 'cp:rank=32'")
    norm = float(m.norm())
    if norm == 0.0:
        zero = [torch.zeros(s, rank, dtype=m.dtype) for s in m.shape]
        return CPFactors(zero[0], zero[1], zero[2], 0.0)
    if rank >= rank_limit(tuple(m.shape)):  # type: ignore[arg-type]
        return exact_factors(m)

    best: CPFactors | None = None
    for restart in range(N_RESTARTS):
        fit = _als(m, rank, tol, max_iter, seed + restart, norm)
        if best is None or fit.relative_error < best.relative_error:
            best = fit
        if best.relative_error <= tol:
            break
    assert best is not None  # N_RESTARTS >= 1
    return best


def _als(
    m: torch.Tensor, rank: int, tol: float, max_iter: int, seed: int, norm: float
) -> CPFactors:
    """One ALS run from a seeded Gaussian start, on the three unfoldings of ``m``.

    Runs in numpy: the tensors are small and the per-operation overhead dominates.
    """
    mm = m.numpy()
    i, j, k = mm.shape
    m1 = mm.reshape(i, j * k)
    m2 = mm.transpose(1, 0, 2).reshape(j, i * k)
    m3 = mm.transpose(2, 0, 1).reshape(k, i * j)
    rng = np.random.default_rng(seed)
    a, b, c = (rng.standard_normal((s, rank)) for s in mm.shape)
    error = previous = float("inf")
    for _ in range(max_iter):
        a = _solve(m1 @ _khatri_rao(b, c), (b.T @ b) * (c.T @ c))
        b = _solve(m2 @ _khatri_rao(a, c), (a.T @ a) * (c.T @ c))
        rhs_c = m3 @ _khatri_rao(a, b)
        gram_ab = (a.T @ a) * (b.T @ b)
        c = _solve(rhs_c, gram_ab)

        # ||M - X||^2 = ||M||^2 - 2 <M, X> + ||X||^2 without forming X
        inner = float((c * rhs_c).sum())
        squared = float((gram_ab * (c.T @ c)).sum())
        error = max(norm**2 - 2.0 * inner + squared, 0.0) ** 0.5 / norm
        if error <= tol or previous - error < STALL_TOL * previous:
            break
        previous = error
    ta, tb, tc = _balance(*(torch.from_numpy(f) for f in (a, b, c)))
    error = float((m - cp_reconstruct(ta, tb, tc)).norm()) / norm
    return CPFactors(ta, tb, tc, error)


def _khatri_rao(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Column-wise Kronecker product: ``(P, R), (Q, R) -> (P * Q, R)``."""
    return (p[:, None, :] * q[None, :, :]).reshape(-1, p.shape[1])


def _solve(rhs: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """``rhs @ gram^-1`` with a small ridge; ``gram`` is symmetric PSD ``(R, R)``."""
    ridge = ALS_RIDGE * max(float(gram.diagonal().max()), 1e-300)
    return np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), rhs.T).T


def _balance(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescale each rank-one term so its three factors have equal norms."""
    na, nb, nc = a.norm(dim=0), b.norm(dim=0), c.norm(dim=0)
    scale = (na * nb * nc).clamp_min(1e-300) ** (1.0 / 3.0)
    return (
        a * (scale / na.clamp_min(1e-300)),
        b * (scale / nb.clamp_min(1e-300)),
        c * (scale / nc.clamp_min(1e-300)),
    )


def group_tensor(spec: ConvSpec, group: InputGroup) -> torch.Tensor:
    """The exact CG map of one first-input group, ``(2l1+1, in2.dim, K)`` float64.

    ``K`` is the sum of ``2 l3 + 1`` over the group's paths, in path order.
    """
    in2 = block_slices(spec.irreps_in2)
    width = sum(2 * p.l3 + 1 for p in group.paths)
    m = torch.zeros(2 * group.l1 + 1, spec.irreps_in2.dim, width, dtype=torch.float64)
    start = 0
    for p in group.paths:
        l2 = spec.irreps_in2[p.i2].ir.l
        stop = start + 2 * p.l3 + 1
        m[:, in2[p.i2], start:stop] = sphere.path_coefficient(group.l1, l2, p.l3)
        start = stop
    return m


def cache_dir() -> Path:
    """``$EQUISERVE_CACHE_DIR/cp``, or ``~/.cache/equiserve/cp``; read per call."""
    root = os.environ.get("EQUISERVE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "equiserve"
    return base / "cp"


def cache_key(spec: ConvSpec, rank: int, tol: float, max_iter: int) -> str:
    """A file name that changes whenever the fitted factors could change."""
    record = {
        "format": CACHE_FORMAT,
        "irreps_in1": str(spec.irreps_in1),
        "irreps_in2": str(spec.irreps_in2),
        "irreps_out": str(spec.irreps_out),
        "instructions": [list(i) for i in spec.instructions],
        "rank": rank,
        "tol": tol,
        "max_iter": max_iter,
        "seed": DEFAULT_SEED,
        "restarts": N_RESTARTS,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return f"cp-r{rank}-{digest[:24]}.pt"


def load_or_fit(
    spec: ConvSpec,
    rank: int,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> tuple[list[CPFactors], Path]:
    """The factors of every first-input group of ``spec``, from the cache if there.

    Returns:
        ``(factors in group order, cache file)``.
    """
    groups = group_by_first_input(spec, [True] * len(spec.instructions))
    path = cache_dir() / cache_key(spec, rank, tol, max_iter)
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if len(stored) == len(groups):
            return [
                CPFactors(f["a"], f["b"], f["c"], float(f["err"])) for f in stored
            ], path
        logger.warning("cp cache %s does not match the spec; refitting", path)

    logger.warning(
        "cp factors for rank %d not cached at %s; fitting now (run "
        "`python -m models.tp.cp` at image build to avoid this)",
        rank,
        path,
    )
    factors = [fit_cp(group_tensor(spec, g), rank, tol, max_iter) for g in groups]
    _atomic_save(
        [
            {
                "a": f.a,
                "b": f.b,
                "c": f.c,
                "err": torch.tensor(f.relative_error, dtype=torch.float64),
            }
            for f in factors
        ],
        path,
    )
    return factors, path


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prefit(
    specs: Iterable[ConvSpec],
    ranks: Iterable[int],
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> list[Path]:
    """Fill the cache for every ``(spec, rank)``; returns the cache files."""
    files = []
    for rank in ranks:
        for spec in dict.fromkeys(specs):
            files.append(load_or_fit(spec, rank, tol, max_iter)[1])
    return files


@register_backend
class CPTP(TPBackend):
    """Rank-``R`` CP factors of each first-input block's CG map.

    Options:
        rank: rank-one terms per first-input irrep (required, ``>= 1``).
        tol: target relative RMSE of the fit (default ``1e-3``).
        max_iter: ALS sweeps per start (default 500).
    """

    name = "cp"
    exact = False
    note = (
        "CP-decomposed CG map: runs the model's own weights; the error falls with "
        "the rank (exact at or above each block's rank limit)"
    )

    def __init__(
        self,
        spec: ConvSpec,
        rank: int | None = None,
        tol: float = DEFAULT_TOL,
        max_iter: int = DEFAULT_MAX_ITER,
        **options: Any,
    ) -> None:
        super().__init__(spec, **options)
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(
                f"backend 'cp' needs an integer rank >= 1, got {rank!r}; "
                "write e.g. 'cp:rank=32'"
            )
        sphere.check_spec(spec, self.name)
        self.rank = rank
        self.groups = group_by_first_input(spec, [True] * len(spec.instructions))
        self._in1 = block_slices(spec.irreps_in1)
        factors, self.cache_file = load_or_fit(spec, rank, float(tol), int(max_iter))
        self.fit_errors = [f.relative_error for f in factors]
        for g, f in enumerate(factors):
            self.register_buffer(f"a_{g}", f.a.contiguous(), False)
            self.register_buffer(f"b_{g}", f.b.contiguous(), False)
            self.register_buffer(f"ct_{g}", f.c.T.contiguous(), False)

    @property
    def relative_error(self) -> float:
        """Largest relative RMSE of the fitted factors over the blocks."""
        return max(self.fit_errors, default=0.0)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """See :meth:`TPBackend.forward`; shapes ``(E, in1.dim)``, ``(E, in2.dim)``,
        ``(E, weight_numel)`` -> ``(E, out.dim)``."""
        check_inputs(self.spec, x, y, w)
        n = x.shape[0]
        out = OutputAssembler(self.spec, n, x, w)
        for g, group in enumerate(self.groups):
            x_block = x[:, self._in1[group.i1]].reshape(n, group.mul, -1)
            a = x_block @ self._table(f"a_{g}", x)  # (E, U, R)
            b = y @ self._table(f"b_{g}", x)  # (E, R)
            values = (a * b.unsqueeze(1)) @ self._table(f"ct_{g}", x)  # (E, U, K)
            out.add_pair(list(group.paths), values)
        return out.result()

    def _table(self, name: str, like: torch.Tensor) -> torch.Tensor:
        table: torch.Tensor = getattr(self, name)
        return table.to(dtype=like.dtype, device=like.device)
