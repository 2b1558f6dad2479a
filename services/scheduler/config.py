"""Scheduler settings, validated, read from the environment once at start-up.

==================================  =====================  ===========================
variable                            default                meaning
==================================  =====================  ===========================
EQUISERVE_DATA_DIR                  .equiserve/campaigns   input and result Parquet
EQUISERVE_STORE_URL                 (SQLite file in dir)   ``sqlite:///path`` or
                                                           ``postgresql://...`` (bare
                                                           ``postgresql://``: libpq
                                                           ``PG*`` variables)
EQUISERVE_CAMPAIGN_CHUNK            256                    structures per work unit
EQUISERVE_CAMPAIGN_IN_FLIGHT        4                      work units at once
EQUISERVE_CAMPAIGN_MAX_ATTEMPTS     3                      tries per work unit
EQUISERVE_CAMPAIGN_MAX_STRUCTURES   10000000               structures per campaign
EQUISERVE_CAMPAIGN_MAX_APPEND       10000                  structures per append
EQUISERVE_DATA_ROOTS                (none)                 directories (``:``-
                                                           separated) the server may
                                                           read source files from
EQUISERVE_MAX_ATOMS                 10000                  atoms per structure
==================================  =====================  ===========================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerConfig:
    """Scheduler settings.

    Attributes:
        data_dir: where input and result Parquet files live.
        store_url: ``sqlite:///...`` or ``postgresql://...``; default: a SQLite
            file in ``data_dir``.
        table_prefix: prefix of the store's tables.
        chunk_size: structures per work unit.
        max_in_flight: work units dispatched at once.
        max_attempts: tries per work unit before its structures are failed.
        retry_delay_s: wait before a failed unit is tried again, s.
        unit_timeout_s: a unit running longer counts as a failed replica, s.
        max_atoms: most atoms in one structure.
        max_structures: most structures in one campaign.
        max_append: most structures in one append.
        data_roots: directories the server may read source files from.
        poll_interval_s: how often the dispatcher looks for new work when idle, s.
    """

    data_dir: Path
    store_url: str = ""
    table_prefix: str = "es_"
    chunk_size: int = 256
    max_in_flight: int = 4
    max_attempts: int = 3
    retry_delay_s: float = 1.0
    unit_timeout_s: float = 3600.0
    max_atoms: int = 10_000
    max_structures: int = 10_000_000
    max_append: int = 10_000
    data_roots: tuple[Path, ...] = ()
    poll_interval_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("chunk_size", "max_in_flight", "max_attempts", "max_append"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def url(self) -> str:
        return (
            self.store_url
            or f"sqlite:///{Path(self.data_dir).resolve()}/campaigns.sqlite"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SchedulerConfig:
        """Settings from ``EQUISERVE_*`` variables (see the module docstring).

        Raises:
            ValueError: a variable that is not a number where one is expected,
                naming the variable.
        """
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            raw = env.get(name, "")
            try:
                return int(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {raw!r}") from None

        roots = env.get("EQUISERVE_DATA_ROOTS", "")
        return cls(
            data_dir=Path(env.get("EQUISERVE_DATA_DIR", ".equiserve/campaigns")),
            store_url=env.get("EQUISERVE_STORE_URL", ""),
            chunk_size=number("EQUISERVE_CAMPAIGN_CHUNK", 256),
            max_in_flight=number("EQUISERVE_CAMPAIGN_IN_FLIGHT", 4),
            max_attempts=number("EQUISERVE_CAMPAIGN_MAX_ATTEMPTS", 3),
            max_structures=number("EQUISERVE_CAMPAIGN_MAX_STRUCTURES", 10_000_000),
            max_append=number("EQUISERVE_CAMPAIGN_MAX_APPEND", 10_000),
            max_atoms=number("EQUISERVE_MAX_ATOMS", 10_000),
            data_roots=tuple(Path(r) for r in roots.split(os.pathsep) if r),
        )
