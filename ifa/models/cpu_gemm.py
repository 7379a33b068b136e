"""The matrix products of the IFA head's inference path on the CPU: which library runs them, and running them.

Two paths: oneDNN's fused linear (+ReLU) (`torch.ops.mkldnn._linear_pointwise`) and torch.addmm (MKL's sgemm on
x86 CPUs). Which one is faster depends on the CPU and the thread count: oneDNN was the faster on an AMD EPYC
(AVX-512), addmm on an Intel Xeon with AMX (the rates are in BENCHMARKS.md). So in fp32 the choice is measured, once per
process for each (thread count, layer shape): both paths run a few interleaved times on a chunk-sized product and
the faster one is kept. bf16 always takes oneDNN (MKL has no bf16 GEMM). IFA_CPU_GEMM=onednn or =matmul forces
one path (to compare them).
"""

from __future__ import annotations

import functools
import os

import torch

from ..timing import measure_times

BACKENDS = ("onednn", "matmul")
CALIBRATION_ROWS = 4096  # the head's CPU chunk (queries per product)
CALIBRATION_ROUNDS = 3


def onednn_available() -> bool:
    """Whether PyTorch's oneDNN fused linear op is there (x86 / ARM CPU builds with mkldnn)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN = onednn_available()


def gemm_backend(x: torch.Tensor, weight: torch.Tensor) -> str:
    """The path for x (m, in) @ weight (out, in)^T: "onednn" or "matmul" (torch.addmm; also every non-CPU tensor,
    float64, and builds without oneDNN)."""
    if not (_ONEDNN and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)):
        return "matmul"
    forced = os.environ.get("IFA_CPU_GEMM", "auto")
    if forced in BACKENDS:
        return forced
    if x.dtype == torch.bfloat16:
        return "onednn"
    return fastest_fp32_backend(torch.get_num_threads(), *weight.shape[::-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool,
           out: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """x (m, in) @ weight (out, in)^T + bias, then ReLU when `relu`: (m, out), through `backend` (default:
    `gemm_backend`). `out`, a buffer, is written by the matmul path only (oneDNN returns a new tensor)."""
    if (backend or gemm_backend(x, weight)) == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    y = torch.addmm(bias, x, weight.t(), out=out) if bias is not None else torch.mm(x, weight.t(), out=out)
    return y.relu_() if relu else y


@functools.cache
def fastest_fp32_backend(threads: int, in_features: int, out_features: int) -> str:
    """The faster fp32 path for (4096, in) @ (in, out) + bias + ReLU at `threads` intra-op threads, by median
    time over 3 interleaved rounds after a warm-up. Once per process and shape: the first fp32 CPU forward of an
    IFA head pays it (BENCHMARKS.md has what it cost)."""
    if not _ONEDNN:
        return "matmul"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(CALIBRATION_ROWS, in_features, generator=g)
    weight, bias = torch.randn(out_features, in_features, generator=g), torch.randn(out_features, generator=g)
    buffer = torch.empty(CALIBRATION_ROWS, out_features)
    runs = {name: functools.partial(linear, x, weight, bias, True, buffer, name) for name in BACKENDS}
    with torch.autocast("cpu", enabled=False):
        times = measure_times(runs, torch.device("cpu"), warmup=1, repeats=CALIBRATION_ROUNDS)
    return min(BACKENDS, key=lambda name: times[name]["wall_ms"])
