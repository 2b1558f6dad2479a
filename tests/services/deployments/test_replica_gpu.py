"""The replica on a GPU: memory probe, batch budget and GPU memory figures.

Marked ``gpu`` (excluded from the default run); it has not run on the development
machine, which has no GPU.
"""

from __future__ import annotations

import asyncio

import pytest

from services.config import ReplicaOptions
from services.deployments.replica import (
    MAX_PROBED_BUDGET,
    MIN_PROBED_BUDGET,
    ModelReplica,
    ReplicaRequest,
)
from tests.services.serving_helpers import si_cell

pytestmark = pytest.mark.gpu


def test_the_probe_sizes_the_budget_and_batches_report_gpu_memory():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.fail("marked gpu but torch sees no CUDA device")
    from models.structure import Structure

    replica = ModelReplica("sevennet-0", "fused", ReplicaOptions(device="cuda"))
    info = replica.info()
    assert info.device == "cuda"
    assert MIN_PROBED_BUDGET <= info.batch_max_atoms <= MAX_PROBED_BUDGET

    request = ReplicaRequest([Structure.from_atoms(si_cell(i)) for i in range(4)], True)
    items = asyncio.run(replica.predict(request))
    figures = [item.batch for item in items if item.batch is not None]
    assert figures and all(f.gpu_memory_bytes for f in figures)
