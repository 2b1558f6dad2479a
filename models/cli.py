"""Command line of the model library.

``python -m models predict --model sevennet-0 --backend fused INPUT -o OUT.extxyz``
reads every frame of any ASE-readable file and writes each with ``energy`` and
``stress`` (Voigt, 6 numbers) in ``info`` and ``forces`` in ``arrays``. A frame that
cannot be computed is written with an ``error`` entry in ``info`` and no results; the
others go on. ``python -m models list`` shows the registered models and backends.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ase import Atoms

logger = logging.getLogger(__name__)

RESULT_KEYS = ("energy", "free_energy", "stress", "forces", "error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="predict every frame of a file")
    predict.add_argument("input", type=Path, help="extxyz, CIF, POSCAR, ... file")
    predict.add_argument(
        "-o", "--output", type=Path, required=True, help="output .extxyz file"
    )
    predict.add_argument("--model", default="sevennet-0")
    predict.add_argument(
        "--backend",
        default=None,
        help="tensor-product backend, e.g. fused, e3nn, cp:rank=32",
    )
    predict.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    predict.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    predict.add_argument("--format", default=None, help="input format if not guessed")
    predict.add_argument(
        "--batch-atoms", type=int, default=2048, help="atoms per forward pass"
    )
    predict.add_argument(
        "--max-atoms", type=int, default=None, help="refuse structures with more atoms"
    )
    sub.add_parser("list", help="list models and their tensor-product backends")
    return parser


def _read_frames(path: Path, fmt: str | None) -> list[Atoms]:
    from ase.io import read

    if not path.is_file():
        raise SystemExit(f"error: input file {path} does not exist")
    try:
        frames = read(path, index=":", format=fmt)
    except Exception as err:  # ASE raises many kinds for unreadable files
        raise SystemExit(
            f"error: cannot read {path} as a structure file ({err}); "
            "give --format if the extension does not say it"
        ) from err
    return frames if isinstance(frames, list) else [frames]


def _result_frame(atoms: Atoms, result: object) -> Atoms:
    """A copy of ``atoms`` carrying ``result`` (a Prediction or an error)."""
    from models.potential import Prediction

    out = atoms.copy()
    out.calc = None
    for key in RESULT_KEYS:
        out.info.pop(key, None)
        out.arrays.pop(key, None)
    if isinstance(result, Prediction):
        out.info["energy"] = result.energy
        out.arrays["forces"] = result.forces
        if result.stress is not None:
            out.info["stress"] = result.stress
    else:
        out.info["error"] = str(result)
    return out


def predict(args: argparse.Namespace) -> int:
    """Run ``predict``; returns the process exit code."""
    from ase.io import write

    from models import Limits, load_model
    from models.structure import DEFAULT_MAX_ATOMS

    frames = _read_frames(args.input, args.format)
    limits = Limits(max_atoms=args.max_atoms or DEFAULT_MAX_ATOMS)
    try:
        model = load_model(
            args.model,
            args.backend,
            args.device,
            args.dtype,
            limits=limits,
            batch_atoms=args.batch_atoms,
        )
    except (KeyError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    if not model.exact:
        logger.warning(
            "backend %s is approximate for %s: %s",
            model.backend,
            model.spec.name,
            model.spec.backend_info(model.backend).note,
        )
    start = time.perf_counter()
    results = model.predict(frames)
    elapsed = time.perf_counter() - start
    write(
        args.output,
        [_result_frame(a, r) for a, r in zip(frames, results, strict=True)],
        format="extxyz",
    )
    failed = sum(not hasattr(r, "energy") for r in results)
    logger.info(
        "%d frames, %d failed, %.2f s; wrote %s",
        len(frames),
        failed,
        elapsed,
        args.output,
    )
    return 0


def list_models() -> int:
    """Print the registry."""
    from models import list_models as specs

    for spec in specs():
        print(
            f"{spec.name}  (version {spec.version}, cutoff {spec.cutoff} Å, "
            f"{len(spec.elements)} elements)"
        )
        print(f"  {spec.description}")
        for info in spec.backends.values():
            kind = "exact" if info.exact else "APPROXIMATE"
            print(f"  - {info.name:14s} {kind:11s} {info.note}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m models``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "predict":
        return predict(args)
    return list_models()


if __name__ == "__main__":
    sys.exit(main())
