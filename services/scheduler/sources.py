"""Structure files read server-side, confined to configured data roots."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from models.structure import Structure
from services.scheduler.errors import InvalidCampaignRequestError

logger = logging.getLogger(__name__)

FORMATS = ("extxyz", "db")
_SUFFIXES = {".xyz": "extxyz", ".extxyz": "extxyz", ".db": "db"}


def confine(path: str, roots: Sequence[Path]) -> Path:
    """Resolve ``path`` (relative to a root, or absolute) inside one of ``roots``.

    Symlinks are resolved before the check, so neither ``..`` nor a link can lead
    outside the roots.

    Raises:
        InvalidCampaignRequestError: no roots are configured, the path leaves every
            root, or it names no file.
    """
    if not roots:
        raise InvalidCampaignRequestError(
            "this server reads no files (no data roots are configured); upload the "
            "structures with AppendStructures instead"
        )
    candidates = [Path(path)] if Path(path).is_absolute() else [r / path for r in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        for root in roots:
            if resolved.is_relative_to(root.resolve()) and resolved.is_file():
                return resolved
    raise InvalidCampaignRequestError(
        f"source {path!r} is not a file inside the server's data roots; give a "
        "path relative to a data root, without leaving it"
    )


def source_format(path: Path, declared: str) -> str:
    """The file's format: ``declared``, or guessed from its extension."""
    fmt = declared or _SUFFIXES.get(path.suffix.lower(), "")
    if fmt not in FORMATS:
        raise InvalidCampaignRequestError(
            f"cannot tell the format of {path.name!r} (got {declared!r}); "
            f"say one of {list(FORMATS)}"
        )
    return fmt


def iter_structures(path: Path, fmt: str, skip: int = 0) -> Iterator[Structure]:
    """Structures of an extxyz file or an ASE database, streamed, from ``skip``."""
    if fmt == "extxyz":
        from ase.io import iread

        for k, atoms in enumerate(iread(str(path), index=f"{skip}:", format="extxyz")):
            label = atoms.info.get("id") or atoms.info.get("name") or f"{skip + k}"
            yield Structure.from_atoms(atoms, label=str(label))
    else:
        from ase.db import connect

        with connect(str(path)) as db:
            for k, row in enumerate(db.select()):
                if k < skip:
                    continue
                yield Structure.from_atoms(row.toatoms(), label=f"{row.id}")
