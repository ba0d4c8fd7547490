"""Inference latency and throughput of the learned prefetcher's network: CPU, GPU eager, GPU CUDA graphs.

Each measurement is a full call as the service makes it: numpy inputs in, probabilities back in host
memory (host-to-device copies and the synchronising read-back included).

    python -m service.bench.inference --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from service.prefetch.learned.model import PrefetchNet
from service.prefetch.learned.runtime import BATCH_BUCKETS, InferenceRunner, random_inputs


def measure(runner: InferenceRunner, batch: int, seconds: float, rng: np.random.Generator) -> dict[str, Any]:
    inputs = random_inputs(batch, rng)
    for _ in range(20):
        runner(inputs)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 50:
        start = time.perf_counter()
        runner(inputs)
        times.append(time.perf_counter() - start)
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return {
        "batch": batch,
        "p50_ms": round(p50 * 1e3, 4),
        "p99_ms": round(p99 * 1e3, 4),
        "predictions_per_s": round(batch / statistics.fmean(times)),
        "calls": len(times),
    }


def run(device: str, seconds: float, cpu_threads: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    results: dict[str, Any] = {"torch": torch.__version__, "host": platform.processor() or platform.machine()}
    modes: list[tuple[str, str, bool]] = [("cpu", "cpu", False)]
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device")
        results["gpu"] = torch.cuda.get_device_name(0)
        modes += [("cuda_eager", "cuda", False), ("cuda_graphs", "cuda", True)]
    torch.set_num_threads(cpu_threads)
    results["cpu_threads"] = cpu_threads
    for label, dev, graphs in modes:
        model = PrefetchNet().to(dev).eval()
        runner = InferenceRunner(model, dev, cuda_graphs=graphs)
        results[label] = [measure(runner, b, seconds, rng) for b in BATCH_BUCKETS]  # the sizes graphs are captured for
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads for the CPU figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    results = run(args.device, args.seconds, args.cpu_threads)
    if args.json:
        print(json.dumps(results))
        return
    for label in ("cpu", "cuda_eager", "cuda_graphs"):
        for row in results.get(label, []):
            print(
                f"{label:12s} batch {row['batch']:5d}  p50 {row['p50_ms']:8.4f} ms  p99 {row['p99_ms']:8.4f} ms  "
                f"{row['predictions_per_s']:>12,d} predictions/s"
            )


if __name__ == "__main__":
    main()
