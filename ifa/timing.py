"""Interleaved timing: each function's median over rounds that run every function once, so a machine whose speed
drifts (a shared VM) moves all of them alike. Used by the benchmarks and the CPU GEMM calibration."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_times(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                  repeats: int) -> dict[str, dict[str, float | None]]:
    """Median time of each function (ms): warm-up, then `repeats` interleaved rounds.

    Returns {name: {"wall_ms", "cpu_ms"}}; on CUDA "wall_ms" comes from CUDA events and "cpu_ms" is None.
    """
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
            sync(device)
        for _ in range(repeats):
            for name, fn in fns.items():
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    sync(device)
                    start.record()
                    fn()
                    end.record()
                    sync(device)
                    samples[name]["wall"].append(start.elapsed_time(end))
                else:
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    t1, c1 = time.perf_counter(), time.process_time()
                    samples[name]["wall"].append(1e3 * (t1 - t0))
                    samples[name]["cpu"].append(1e3 * (c1 - c0))
    return {name: {"wall_ms": statistics.median(s["wall"]),
                   "cpu_ms": statistics.median(s["cpu"]) if s["cpu"] else None} for name, s in samples.items()}
