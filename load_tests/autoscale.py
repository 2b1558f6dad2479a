"""Serve autoscaling on a local CPU Ray: replica counts through a step in load, as JSON.

A step in load makes Serve add replicas within its limits, and remove them after;
the counts are sampled once a second and written as JSON (and a PNG).

The deployment is the platform's real model replica
(:class:`services.deployments.replica.ModelReplica`, SevenNet-0 with the ``fused``
backend on CPU) with an autoscaling config sized for two cores: half a CPU and one
torch thread per replica, 1 to ``--max-replicas`` replicas, a low
``target_ongoing_requests`` so that a handful of concurrent callers is a real step.
Phases: ``base`` (one caller), ``step`` (``--step-callers`` callers), ``cool`` (no
load) until the deployment is back at its minimum or ``--cool`` seconds pass.

Usage::

    python -m load_tests.autoscale [--step-callers 12] [--out load_results/autoscale]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from load_tests.stats import write_json

logger = logging.getLogger(__name__)

APP_NAME = "equiserve-autoscale-demo"


def autoscaling_config(max_replicas: int) -> dict[str, Any]:
    """Serve autoscaling for the demo: reacts within seconds, not minutes."""
    return {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": max_replicas,
        "target_ongoing_requests": 2,
        "metrics_interval_s": 1.0,
        "look_back_period_s": 5.0,
        "upscale_delay_s": 3.0,
        "downscale_delay_s": 15.0,
    }


def _deploy(max_replicas: int) -> Any:
    """Run the autoscaled model deployment; its handle."""
    from ray import serve

    from services.config import ReplicaOptions
    from services.deployments.replica import ModelReplica

    options = ReplicaOptions(num_cpus=0.5, torch_threads=1, device="cpu")
    deployment: Any = serve.deployment(ModelReplica)
    app = deployment.options(
        name=APP_NAME,
        autoscaling_config=autoscaling_config(max_replicas),
        ray_actor_options={"num_cpus": options.num_cpus, "num_gpus": 0},
        max_ongoing_requests=8,
    ).bind("sevennet-0", "fused", options, 10_000)
    return serve.run(app, name=APP_NAME, route_prefix=None)


def replica_states() -> dict[str, int]:
    """Replicas of the demo deployment by state (RUNNING, STARTING, STOPPING...)."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    deployment = app.deployments.get(APP_NAME) if app else None
    states = deployment.replica_states if deployment else {}
    return {str(state).rsplit(".", 1)[-1]: int(n) for state, n in states.items()}


def _structures(n: int) -> list[Any]:
    from ase.build import bulk

    from models.structure import Structure

    base = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
        out.append(Structure.from_atoms(atoms, label=f"si64-{i}"))
    return out


async def _callers(handle: Any, n: int, until: float, counts: list[int]) -> None:
    """``n`` callers sending one 64-atom structure each, back to back, until then."""
    from services.deployments.replica import ReplicaRequest

    structures = _structures(16)

    async def loop(k: int) -> None:
        i = k
        while time.monotonic() < until:
            request = ReplicaRequest([structures[i % len(structures)]], False)
            await handle.predict.remote(request)
            counts[0] += 1
            i += n

    await asyncio.gather(*(loop(k) for k in range(n)))


async def _run_phases(handle: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Drive the phases while sampling replica states once a second."""
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    phase = "base"
    done = [0]

    async def sample_until(stop: asyncio.Event) -> None:
        while not stop.is_set():
            states = await asyncio.to_thread(replica_states)
            samples.append({"t_s": round(time.monotonic() - t0, 1), "phase": phase,
                            "completed": done[0], "replicas": states})  # fmt: skip
            await asyncio.sleep(1.0)

    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_until(stop))
    await _callers(handle, 1, time.monotonic() + args.base, done)
    phase = "step"
    await _callers(handle, args.step_callers, time.monotonic() + args.step, done)
    phase = "cool"
    cool_until = time.monotonic() + args.cool
    while time.monotonic() < cool_until:
        await asyncio.sleep(1.0)
        if samples and _settled(samples[-1]["replicas"]):
            break
    await asyncio.sleep(2.0)
    stop.set()
    await sampler
    return samples


def _settled(states: dict[str, int]) -> bool:
    """One replica running and none starting or stopping."""
    return states.get("RUNNING", 0) == 1 and sum(states.values()) == 1


def _running(sample: dict[str, Any]) -> int:
    return int(sample["replicas"].get("RUNNING", 0))


def verdict(samples: Sequence[dict[str, Any]], max_replicas: int) -> dict[str, Any]:
    """Did the step add replicas within limits, and did the cool-down remove them?"""
    running = [_running(s) for s in samples]
    step = [_running(s) for s in samples if s["phase"] == "step"]
    base = [_running(s) for s in samples if s["phase"] == "base"]
    peak = max(step, default=0)
    rates = {}
    for phase in ("base", "step"):
        mine = [s for s in samples if s["phase"] == phase]
        if len(mine) > 1 and mine[-1]["t_s"] > mine[0]["t_s"]:
            done = mine[-1]["completed"] - mine[0]["completed"]
            rates[phase] = round(done / (mine[-1]["t_s"] - mine[0]["t_s"]), 3)
    return {
        "structures_per_s_by_phase": rates,
        "base_replicas": max(base, default=0),
        "peak_replicas": peak,
        "final_replicas": running[-1] if running else 0,
        "scaled_up": peak > max(base, default=0),
        "within_limits": max(running, default=0) <= max_replicas,
        "scaled_down": bool(running) and running[-1] == 1,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-replicas", type=int, default=3)
    p.add_argument("--step-callers", type=int, default=12)
    p.add_argument("--base", type=float, default=15.0, help="s with one caller")
    p.add_argument("--step", type=float, default=60.0, help="s of the load step")
    p.add_argument("--cool", type=float, default=90.0, help="most s without load")
    p.add_argument("--out", type=Path, default=Path("load_results/autoscale"))
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a private Ray and Serve, run the phases, tear both down; the result."""
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="rayas", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _temp_dir=temp_dir, logging_level=logging.WARNING)  # fmt: skip
    try:
        serve.start(proxy_location="Disabled")
        handle = _deploy(args.max_replicas)
        samples = asyncio.run(_run_phases(handle, args))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    result = {
        "autoscaling_config": autoscaling_config(args.max_replicas),
        "step_callers": args.step_callers,
        "verdict": verdict(samples, args.max_replicas),
        "samples": samples,
    }
    write_json(args.out / "autoscale.json", result)
    _plot(args.out / "autoscale.png", samples)
    return result


def _plot(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    t = [s["t_s"] for s in samples]
    starting = [s["replicas"].get("STARTING", 0) for s in samples]
    ax.step(t, [_running(s) for s in samples], where="post", label="running")
    ax.step(t, starting, where="post", label="starting")
    for name in ("step", "cool"):
        starts = [s["t_s"] for s in samples if s["phase"] == name]
        if starts:
            ax.axvline(starts[0], color="grey", linestyle=":")
            ax.text(starts[0], 0.1, f" {name}", color="grey")
    ax.set_xlabel("time, s")
    ax.set_ylabel("replicas")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 when the step scaled up within limits and back down."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(parse_args(argv))
    v = result["verdict"]
    print(
        f"replicas: base {v['base_replicas']}, peak {v['peak_replicas']}, final "
        f"{v['final_replicas']} (scaled up {v['scaled_up']}, within limits "
        f"{v['within_limits']}, scaled down {v['scaled_down']})"
    )
    return 0 if v["scaled_up"] and v["within_limits"] and v["scaled_down"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
