"""Benchmark: throughput through gRPC + Ray Serve against the in-process model.

``make bench-serve`` (``python -m services.bench_serve``) measures, side by side in
one run and on the same structures:

- in-process: ``models.load_model(...).predict(structures)`` (batched by atoms),
  torch with the same threads as the replica;
- served: the platform started as in production (``services.serve_main`` in a
  subprocess: its own local Ray, one replica with those threads, the gateway),
  saturated by concurrent clients sending small requests;
- latency of a small request (one structure) through the service, p50/p99, and the
  in-process latency of the same structure, whose difference is the overhead per
  request.

The two throughput measurements alternate round by round, so that load from other
processes on the machine drifts into both alike. Results go to JSON (default
``bench_results/serve.json``) and the ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("services.bench_serve")

API_KEY = "bench-key"
TARGET_RATIO = 0.85
START_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_structures(count: int, repeat: int, seed: int) -> list[Any]:
    """``count`` rattled diamond-Si cells of ``8 * repeat**3`` atoms."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        out.append(atoms)
    return out


class ServedPlatform:
    """``services.serve_main`` in a subprocess, with a private Ray."""

    def __init__(self, threads: int, batch_atoms: int, log_path: Path) -> None:
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            EQUISERVE_API_KEYS=f"bench:{API_KEY}",
            EQUISERVE_GRPC_ADDRESS=f"127.0.0.1:{self.port}",
            EQUISERVE_METRICS_PORT=str(_free_port()),
            EQUISERVE_DEPLOYMENTS="sevennet-0/fused",
            EQUISERVE_REPLICA_CPUS=str(threads),
            EQUISERVE_TORCH_THREADS=str(threads),
            EQUISERVE_BATCH_MAX_ATOMS=str(batch_atoms),
            EQUISERVE_DEVICE="cpu",
            EQUISERVE_CAMPAIGNS="false",
        )
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.serve_main", "--num-cpus", str(threads)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + START_TIMEOUT_S
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"serve_main exited; see {self._log.name}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(1.0)
        raise TimeoutError(f"the platform was not ready in {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def time_in_process(
    model: Any, structures: Sequence[Any], in_worker_thread: bool = False
) -> float:
    """Structures per second of one batched in-process ``predict`` call.

    Args:
        model: the loaded model.
        structures: what to evaluate.
        in_worker_thread: call from a fresh thread instead of the main thread. On a
            loaded machine torch's OpenMP pool behaves very differently in the two
            (the replica computes in a worker thread), so both are measured and the
            faster one is the baseline.
    """
    rates: list[float] = []

    def call() -> None:
        started = time.perf_counter()
        model.predict(structures, compute_stress=False)
        rates.append(len(structures) / (time.perf_counter() - started))

    if in_worker_thread:
        thread = threading.Thread(target=call)
        thread.start()
        thread.join()
    else:
        call()
    return rates[0]


def time_served(
    client: Any, structures: Sequence[Any], per_request: int, concurrency: int
) -> float:
    """Structures per second with ``concurrency`` clients sending small requests."""
    chunks = [
        structures[i : i + per_request] for i in range(0, len(structures), per_request)
    ]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not chunks:
                    return
                chunk = chunks.pop()
            try:
                client.predict(chunk, properties=("energy", "forces"))
            except BaseException as err:  # reported after the run
                errors.append(err)
                return

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} served requests failed: {errors[0]}")
    return len(structures) / (time.perf_counter() - started)


def latencies(call: Callable[[], Any], count: int) -> list[float]:
    """Wall times of ``count`` sequential calls, s."""
    out = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def _in_thread(fn: Callable[[], list[float]]) -> list[float]:
    out: list[list[float]] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement and return the JSON record."""
    import torch

    import models
    from services.client import EquiserveClient

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    structures = make_structures(args.structures, args.repeat, seed=0)
    small = make_structures(1, 1, seed=1)
    model = models.load_model(
        "sevennet-0", backend="fused", device="cpu", batch_atoms=args.batch_atoms
    )
    model.predict(structures[:2])  # warm-up

    log_path = Path(tempfile.mkdtemp(prefix="bench-serve")) / "serve_main.log"
    served = ServedPlatform(args.threads, args.batch_atoms, log_path)
    try:
        served.wait_ready()
        client = EquiserveClient(served.address, api_key=API_KEY, timeout=600)
        time_served(client, structures[: args.concurrency], 1, args.concurrency)

        main_rates, worker_rates, serv = [], [], []
        for r in range(args.rounds):
            main_rates.append(time_in_process(model, structures))
            worker_rates.append(time_in_process(model, structures, True))
            serv.append(
                time_served(client, structures, args.per_request, args.concurrency)
            )
            logger.info(
                "round %d: in-process %.2f/s (main thread), %.2f/s (worker thread), "
                "served %.2f/s",
                r,
                main_rates[-1],
                worker_rates[-1],
                serv[-1],
            )

        served_lat = latencies(lambda: client.predict(small), args.latency_calls)
        local_lat = min(
            latencies(lambda: model.predict(small), args.latency_calls),
            _in_thread(
                lambda: latencies(lambda: model.predict(small), args.latency_calls)
            ),
            key=lambda values: _pct(values, 50),
        )
        client.close()
    finally:
        served.stop()

    in_med = max(statistics.median(main_rates), statistics.median(worker_rates))
    inproc = main_rates if in_med == statistics.median(main_rates) else worker_rates
    serv_med = statistics.median(serv)
    return {
        "benchmark": "serve",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            # other processes' load distorts CPU-bound ratios; recorded to judge them
            "load_average_1m_before": load_before[0],
            "load_average_1m_after": os.getloadavg()[0],
        },
        "config": {
            "model": "sevennet-0",
            "backend": "fused",
            "device": "cpu",
            "torch_threads": args.threads,
            "replicas": 1,
            "structures": args.structures,
            "atoms_per_structure": 8 * args.repeat**3,
            "structures_per_request": args.per_request,
            "concurrent_clients": args.concurrency,
            "rounds": args.rounds,
            "batch_max_atoms": args.batch_atoms,
        },
        "throughput_structures_per_s": {
            "in_process": inproc,
            "in_process_main_thread": main_rates,
            "in_process_worker_thread": worker_rates,
            "served": serv,
            "in_process_median": in_med,
            "served_median": serv_med,
        },
        "served_over_in_process": serv_med / in_med,
        "target_ratio": TARGET_RATIO,
        "meets_target": serv_med / in_med >= TARGET_RATIO,
        "small_request_latency_s": {
            "served_p50": _pct(served_lat, 50),
            "served_p99": _pct(served_lat, 99),
            "in_process_p50": _pct(local_lat, 50),
            "in_process_p99": _pct(local_lat, 99),
            "overhead_p50": _pct(served_lat, 50) - _pct(local_lat, 50),
            "calls": args.latency_calls,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structures", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=1, help="Si cell repeat (8 n^3)")
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-atoms", type=int, default=1024)
    parser.add_argument("--latency-calls", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench_results/serve.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    record = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    tp, lat = record["throughput_structures_per_s"], record["small_request_latency_s"]
    print(
        f"in-process {tp['in_process_median']:.2f} structures/s, served "
        f"{tp['served_median']:.2f} structures/s: ratio "
        f"{record['served_over_in_process']:.3f} (target {TARGET_RATIO})"
    )
    print(
        f"small request: served p50 {lat['served_p50'] * 1e3:.1f} ms, p99 "
        f"{lat['served_p99'] * 1e3:.1f} ms; in-process p50 "
        f"{lat['in_process_p50'] * 1e3:.1f} ms; overhead p50 "
        f"{lat['overhead_p50'] * 1e3:.1f} ms"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
