"""Speed and memory of the IFA head, FPN vs FPN+IFA models and full-resolution querying (the app's request is
measured by tools/bench_app_request.py, outside the library).

python -m ifa.benchmark [--device cpu|cuda] [--size HxW] [--model-size HxW] [--json OUT] [--repeats N] [--quick]

Everything compared is measured side by side in one run: each group of functions is warmed up,
then run `repeats` times interleaved (A, B, A, B, ...) and summarised by its median, so that a
change of machine load affects both sides alike. Times: wall clock (perf_counter) and process CPU
time (process_time) on the CPU; CUDA events on the GPU. `--clock` picks which one the ratios use
(CPU time is the stable choice on a machine shared with other work).

Peak memory, CPU: the function runs once in a fresh process forked from this one (it inherits
the built model and inputs, so nothing is imported or built while measuring); after a warm-up
call the child returns freed heap memory to the system (malloc_trim), resets its resident-set
high-water mark (/proc/self/clear_refs) and reports VmHWM after the call minus VmRSS before it:
the extra resident memory the call needed, its output included (Linux only; tracemalloc does not
see torch's allocations). The child runs with one intra-op thread. CUDA: max_memory_allocated
after reset_peak_memory_stats, minus memory_allocated before the call.

The comparisons double as checks: fast head vs the reference formula, the IFA model vs its
head's reference formula, full-resolution logits (every chunk size, and each of the head's reads at the small size)
vs `query_points` at 2048 pixels.
A mismatch makes the command exit with status 1.

Targets (as ratios in one run at 1024x2048): fast head >= 6x the reference on the CPU (issue 16; issue 5 asked
2.5x), FPN+IFA no slower than FPN with the same backbone, full-resolution querying < 2 GB extra peak.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .models import create_model
from .models.ifa import IFA_READS, IFAHead
from .timing import measure_times, sync

PARTS = ("head", "models", "fullres", "cpu_paths", "reads")
MODEL_BACKBONES = (("efficientnet_lite0", "effl0"), ("resnet50", "r50"))
# Paper widths: C = 256 per level, MLP 512-256-256, K = 19 (Cityscapes), learned PE with d = 24.
PAPER = {"channels": 256, "hidden": (512, 256, 256), "num_classes": 19}
# The largest |fast - reference| accepted, relative to max(1, |reference|max), per compute dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
CPU_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL_SIZE = (1024, 2048)  # the size the targets are stated at
TARGETS = {"head_speedup": 6.0, "ifa_over_fpn_latency": 1.0, "fullres_extra_peak_mb": 2048.0}


# --- sizes and inputs ---------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size HxW such as 1024x2048, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"sizes must be at least 32x32, got {text!r}")
    return h, w


def size_tag(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def level_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Backbone level sizes for an input size: ceil(H / s) x ceil(W / s) for s = 4, 8, 16, 32."""
    return [(-(-size[0] // s), -(-size[1] // s)) for s in (4, 8, 16, 32)]


def paper_head(seed: int = 0, read: str = "nearest") -> IFAHead:
    """An IFA head at the paper's widths with random weights and non-trivial BatchNorm statistics (the same for
    every `read`)."""
    torch.manual_seed(seed)
    head = IFAHead([PAPER["channels"]] * 4, PAPER["num_classes"], hidden=PAPER["hidden"], read=read)
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return head.eval()


def head_inputs(size: tuple[int, int], device: torch.device, seed: int = 1) -> list[torch.Tensor]:
    """Level maps (1, C, h_l, w_l) of an input of `size`, standard normal."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, PAPER["channels"], h, w, generator=g).to(device) for h, w in level_sizes(size)]


# --- peak memory --------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_memory_supported() -> bool:
    """Whether this system lets a process reset its resident-set high-water mark (Linux)."""
    return sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)


def _memory_child(fn: Callable[[], object], repeats: int, warmup: bool, probe, conn) -> None:
    """In a forked process: extra peak RSS (MiB) of one call of fn, the call times (ms), probe(output)."""
    try:
        torch.set_num_threads(1)  # a forked OpenMP runtime is only safe single-threaded
        with torch.inference_mode():
            if warmup:
                fn()
            _malloc_trim()
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
            before = _status_kb("VmRSS")
            times, sample = [], None
            for i in range(repeats):
                c0, t0 = time.process_time(), time.perf_counter()
                out = fn()
                times.append((1e3 * (time.perf_counter() - t0), 1e3 * (time.process_time() - c0)))
                if i == 0:
                    peak = _status_kb("VmHWM")
                    sample = probe(out).numpy() if probe is not None else None  # numpy: plain pickling
                del out
        conn.send({"extra_peak_mb": (peak - before) / 1024, "wall_ms": statistics.median(t for t, _ in times),
                   "cpu_ms": statistics.median(c for _, c in times), "probe": sample})
    except Exception as err:  # reported to the parent, which raises it
        conn.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        conn.close()


def measure_peak(fn: Callable[[], object], device: torch.device, repeats: int = 1, warmup: bool = True,
                 probe: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Extra peak memory (MiB) of one call of fn above what is held before it (see the module docstring).

    CPU: measured in a forked child (single-threaded) after a warm-up call unless warmup=False; the
    child also times `repeats` calls and returns probe(output of the first): {"extra_peak_mb",
    "wall_ms", "cpu_ms", "probe"}. CUDA: in this process, {"extra_peak_mb", "probe"}.
    """
    if device.type == "cuda":
        with torch.inference_mode():
            if warmup:
                fn()
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            out = fn()
            sync(device)
            peak = torch.cuda.max_memory_allocated(device)
            sample = probe(out) if probe is not None else None
            del out
        return {"extra_peak_mb": (peak - before) / 2 ** 20, "probe": sample}
    if not cpu_memory_supported():
        raise RuntimeError("peak memory on the CPU needs Linux /proc/self/clear_refs; use --no-memory")
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_memory_child, args=(fn, repeats, warmup, probe, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = {"error": f"the measuring process died (exit code {process.exitcode}; out of memory?)"}
    process.join()
    if "error" in result:
        raise RuntimeError(f"memory measurement failed: {result['error']}")
    return result


# --- comparisons --------------------------------------------------------------------------------
def compare(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> dict[str, float | bool]:
    """Max |a - b| and whether it is within TOLERANCE[dtype] * max(1, max |b|)."""
    a, b = a.float(), b.float()
    diff = (a - b).abs().max().item() if a.shape == b.shape else math.inf
    scale = max(1.0, b.abs().max().item())
    return {"max_abs_diff": diff, "equal": bool(diff <= TOLERANCE[dtype] * scale)}


def _autocast(device: torch.device, dtype: torch.dtype):
    if device.type != "cuda" or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


# --- 1. the head: fast path vs the reference formula --------------------------------------------
def bench_head(size: tuple[int, int], device: torch.device, precisions: list[str], warmup: int,
               repeats: int) -> list[dict]:
    head = paper_head().to(device)
    feats = head_inputs(size, device)
    rows = []
    for precision in precisions:
        dtype = DTYPES[precision]

        def fast(dtype=dtype):
            with _autocast(device, dtype):
                return head(feats)

        def reference(dtype=dtype):
            with _autocast(device, dtype):
                return head.forward_reference(feats)

        with torch.inference_mode():
            check = compare(fast(), reference(), dtype)
        times = measure_times({"fast": fast, "reference": reference}, device, warmup, repeats)
        rows.append({"size": list(size), "grid": list(level_sizes(size)[0]), "precision": precision,
                     "fast": times["fast"], "reference": times["reference"], **check})
    return rows


# --- CPU paths: the GEMM rates the head could reach, bf16 on the shipped model ---------------------------------
def head_gemm_shapes(size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The (m, k, n) matrix products of the fast head's inference path at `size`, paper widths: each level's
    first-layer projection W_z z over its cells (m = h_l w_l), then the hidden layers and the classifier over the
    stride-4 query grid (the first layer's sum of level terms and the encodings' table are not products)."""
    c, hidden, k = PAPER["channels"], PAPER["hidden"], PAPER["num_classes"]
    grid = level_sizes(size)[0][0] * level_sizes(size)[0][1]
    shapes = [(h * w, c, hidden[0]) for h, w in level_sizes(size)]
    widths = [*hidden, k]
    return shapes + [(grid, widths[i], widths[i + 1]) for i in range(len(widths) - 1)]


def gemm_flops(shapes: list[tuple[int, int, int]]) -> float:
    return float(sum(2 * m * k * n for m, k, n in shapes))


def gemm_rate_fns(shapes: list[tuple[int, int, int]]) -> dict[str, Callable[[], object]]:
    """The head's products run back to back through each CPU library path: MKL fp32 (torch.addmm), oneDNN fp32
    and oneDNN bf16 (mkldnn._linear_pointwise, when PyTorch has it)."""
    from .inference import cpu_supports_bf16
    from .models.cpu_gemm import onednn_available

    g = torch.Generator().manual_seed(0)
    data = {torch.float32: [tuple(torch.randn(*shape, generator=g) for shape in ((m, k), (n, k), (n,)))
                            for m, k, n in shapes]}

    def mkl():
        for x, w, b in data[torch.float32]:
            torch.addmm(b, x, w.t())

    def onednn(dtype):
        def run():
            for x, w, b in data[dtype]:
                torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return run

    fns = {"mkl_fp32": mkl}
    if onednn_available():
        fns["onednn_fp32"] = onednn(torch.float32)
        if cpu_supports_bf16():
            data[torch.bfloat16] = [tuple(t.bfloat16() for t in item) for item in data[torch.float32]]
            fns["onednn_bf16"] = onednn(torch.bfloat16)
    return fns


def bench_cpu_paths(size: tuple[int, int], warmup: int, repeats: int, quick: bool) -> dict:
    """The fast head's achieved GFLOP/s at `size` against the GEMM rates of the same products (one run), and
    bf16 against fp32 for the shipped IFA model on a shipped CamVid image (time ratio, argmax agreement)."""
    from .inference import cpu_supports_bf16

    head, feats = paper_head(), head_inputs(size, torch.device("cpu"))
    shapes = head_gemm_shapes(size)
    # The head and the bare products in the same interleaved rounds: the VM's speed drifts between runs.
    times = measure_times({"fast_head": lambda: head(feats), **gemm_rate_fns(shapes)}, torch.device("cpu"),
                          warmup, repeats)
    timed = times.pop("fast_head")
    rates = {name: gemm_flops(shapes) / (1e-3 * t["wall_ms"]) / 1e9 for name, t in times.items()}
    out = {"size": list(size), "head_gemm_gflop": gemm_flops(shapes) / 1e9, "head_fast": timed,
           "head_gflops": gemm_flops(shapes) / (1e-3 * timed["wall_ms"]) / 1e9, "gemm_gflops": rates}
    out["bf16"] = bench_bf16_ifa(warmup, repeats, quick) if cpu_supports_bf16() else {
        "skipped": "this CPU has no native bf16 (oneDNN)"}
    return out


SHIPPED_IFA = Path(__file__).resolve().parents[1] / "checkpoints" / "camvid-effl0-ifa"
SHIPPED_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "samples" / "camvid" / "0016E5_07959.png"


def bench_bf16_ifa(warmup: int, repeats: int, quick: bool) -> dict:
    """The shipped IFA model at 360x480 on a real CamVid frame: bf16 autocast time / fp32 time, and the share of
    pixels whose label bf16 keeps (skipped outside a source checkout, where they are not)."""
    import numpy as np
    from PIL import Image

    from .hub import load_model
    from .inference import Predictor

    if not (SHIPPED_IFA / "config.json").is_file() or not SHIPPED_IMAGE.is_file():
        return {"skipped": f"needs {SHIPPED_IFA} and {SHIPPED_IMAGE} (a source checkout)"}
    with Image.open(SHIPPED_IMAGE) as img:
        image = np.asarray(img.convert("RGB").resize((160, 120)) if quick else img.convert("RGB"))
    model = load_model(SHIPPED_IFA).fold_batchnorm()  # as the app runs it
    predictors = {p: Predictor(model, device="cpu", precision=p) for p in ("fp32", "bf16")}
    labels = {p: pr.predict(image).labels for p, pr in predictors.items()}
    times = measure_times({p: (lambda pr=pr: pr.predict(image)) for p, pr in predictors.items()},
                          torch.device("cpu"), warmup, repeats)
    return {"image": SHIPPED_IMAGE.name, "size": list(image.shape[:2]), "fp32": times["fp32"], "bf16": times["bf16"],
            "argmax_agreement": float((labels["fp32"] == labels["bf16"]).mean())}


# --- 2. whole models: FPN vs FPN+IFA ------------------------------------------------------------
def _call(model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with _autocast(device, dtype):
        return model(x)


def bench_models(size: tuple[int, int], device: torch.device, precision: str, warmup: int, repeats: int,
                 memory: bool, compile_models: bool = False) -> list[dict]:
    """FPN and FPN+IFA with the same backbone and widths (paper widths, K = 19) on one input.

    compile_models adds both models under torch.compile (default inductor backend) to the same
    interleaved timing; the first call's time (compilation) is reported apart.
    """
    dtype = DTYPES[precision]
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2)).to(device)
    rows = []
    for backbone, tag in MODEL_BACKBONES:
        torch.manual_seed(0)
        models = {arch: create_model(architecture=arch, backbone=backbone, num_classes=PAPER["num_classes"],
                                     mlp_channels=list(PAPER["hidden"])).eval().to(device) for arch in ("fpn", "ifa")}
        xs = x
        if device.type == "cuda":  # the Predictor's GPU layout
            models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
            xs = x.contiguous(memory_format=torch.channels_last)
        fns = {arch: functools.partial(_call, model, xs, device, dtype) for arch, model in models.items()}
        ifa = models["ifa"]
        with torch.inference_mode(), _autocast(device, dtype):
            reference = F.interpolate(ifa.decoder.head.forward_reference(ifa.levels(xs)), size=size,
                                      mode="bilinear", align_corners=ifa.config.align_corners)
            check = compare(ifa(xs), reference, dtype)
        del reference
        row = {"backbone": backbone, "tag": tag, "size": list(size), "precision": precision,
               "ifa_vs_head_reference": check}
        if compile_models:
            for arch in ("fpn", "ifa"):
                compiled = torch.compile(models[arch])
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = _call(compiled, xs, device, dtype)
                    sync(device)
                    row[f"{arch}_compile_s"] = time.perf_counter() - t0
                    row[f"{arch}_compiled_vs_eager"] = compare(out, fns[arch](), dtype)
                fns[f"{arch}_compiled"] = functools.partial(_call, compiled, xs, device, dtype)
        row.update(measure_times(fns, device, warmup, repeats))
        if memory:
            for arch in ("fpn", "ifa"):
                row[arch]["extra_peak_mb"] = measure_peak(fns[arch], device)["extra_peak_mb"]
        rows.append(row)
        torch._dynamo.reset()
        del models, fns, ifa
    return rows


# --- 3. full-resolution querying ----------------------------------------------------------------
def _query_grid(head: IFAHead, feats: list[torch.Tensor], size: tuple[int, int], chunk: int,
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    head.chunk_size = chunk
    with _autocast(device, dtype):
        return head(feats, size)


def bench_fullres(size: tuple[int, int], device: torch.device, precision: str, chunks: list[int], warmup: int,
                  repeats: int, memory: bool) -> dict:
    """Every input pixel queried from resident level features (the backbone is not included).

    Checks: the logits at 2048 random pixels equal `query_points` there, for every chunk size.
    """
    dtype = DTYPES[precision]
    head = paper_head().to(device)
    default_chunk = head._chunk_queries(device)  # the head's own choice for this device
    chunks = list(dict.fromkeys([default_chunk if c is None else c for c in chunks]))
    feats = head_inputs(size, device)
    g = torch.Generator().manual_seed(3)
    pix = torch.stack([torch.randint(0, n, (2048,), generator=g) for n in size], dim=-1).to(device)
    centres = -1 + (2 * pix.double() + 1) / torch.tensor(size, dtype=torch.float64, device=device)
    with torch.inference_mode(), _autocast(device, dtype):
        points = head.query_points(feats, centres[None].float())[0]

    def probe(out: torch.Tensor) -> torch.Tensor:
        return out[0][:, pix[:, 0], pix[:, 1]].float().cpu()

    rows = []
    for chunk in chunks:
        fn = functools.partial(_query_grid, head, feats, size, chunk, device, dtype)
        row = {"chunk_size": chunk, "queries_per_chunk": max(1, chunk // size[1]) * size[1]}
        if memory and device.type == "cpu":
            # One forked process times the calls and watches the first one's memory (no warm-up:
            # the head has nothing to warm on the CPU, and a call at this size is long).
            result = measure_peak(fn, device, repeats=repeats, warmup=False, probe=probe)
            row["threads"] = 1
        else:
            row.update(measure_times({"q": fn}, device, warmup, repeats)["q"])
            result = measure_peak(fn, device, probe=probe) if memory else {"probe": None}
            if result["probe"] is None:
                with torch.inference_mode():
                    result["probe"] = probe(fn())
        sample = torch.as_tensor(result.pop("probe"))
        row.update(result)
        row["vs_query_points"] = compare(sample, points.float().cpu(), dtype)
        rows.append(row)
    return {"size": list(size), "precision": precision, "default_chunk_size": default_chunk, "rows": rows}


# --- 4. the head's reads: the paper's nearest cell and the named variants ------------------------
def bench_reads(size: tuple[int, int], device: torch.device, precision: str, warmup: int, repeats: int) -> dict:
    """The paper head's fast path with each read (`IFA_READS`, the same weights) on the stride-4 grid and at every
    pixel of an input of `size` (the level maps resident, ceil(size / stride) as EfficientNet-Lite0 gives them to the
    app: at 360x480 the stride-16 level's 23 rows do not divide the grid's), all interleaved. Checks: each read's
    every-pixel logits at 2048 random pixels equal `query_points` there."""
    dtype = DTYPES[precision]
    feats = head_inputs(size, device)
    heads = {read: paper_head(read=read).to(device) for read in IFA_READS}
    g = torch.Generator().manual_seed(3)
    pix = torch.stack([torch.randint(0, n, (2048,), generator=g) for n in size], dim=-1).to(device)
    centres = -1 + (2 * pix.double() + 1) / torch.tensor(size, dtype=torch.float64, device=device)
    fns, checks = {}, {}
    for read, head in heads.items():
        for where, grid in (("grid", None), ("full", tuple(size))):
            def fn(head=head, grid=grid):
                with _autocast(device, dtype):
                    return head(feats, grid)
            fns[f"{read}_{where}"] = fn
        with torch.inference_mode(), _autocast(device, dtype):
            points = head.query_points(feats, centres[None].float())[0].float().cpu()
            full = fns[f"{read}_full"]()[0][:, pix[:, 0], pix[:, 1]].float().cpu()
        checks[read] = compare(full, points, dtype)
    return {"size": list(size), "precision": precision,
            "times": measure_times(fns, device, warmup, repeats), "vs_query_points": checks}


# --- report -------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):  # the instruction sets the CPU paths depend on
                info["cpu_isa"] = [f for f in line.split(":", 1)[1].split() if f in CPU_ISA_FLAGS]
                break
        mem = Path("/proc/meminfo").read_text().split()
        info["memory_gb"] = round(int(mem[1]) / 2 ** 20, 1)
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _ms(entry: dict, clock: str) -> float:
    value = entry.get(f"{clock}_ms")
    return entry["wall_ms"] if value is None else value


def summarize(results: dict, clock: str) -> tuple[dict, dict, dict]:
    """(ratios, memory, targets) from the raw results."""
    ratios, memory, targets = {}, {}, {}
    for i, row in enumerate(results.get("head", [])):
        key = f"head_speedup_{size_tag(row['size'])}"
        value = _ms(row["reference"], clock) / _ms(row["fast"], clock)
        ratios[f"{key}_{row['precision']}"] = value
        if i == 0 or not any(r["size"] == row["size"] for r in results["head"][:i]):
            ratios[key] = value
    for row in results.get("models", []):
        ratios[f"ifa_over_fpn_latency_{row['tag']}"] = _ms(row["ifa"], clock) / _ms(row["fpn"], clock)
        for arch in ("fpn", "ifa"):
            if f"{arch}_compiled" in row:
                ratios[f"compiled_over_eager_latency_{arch}_{row['tag']}"] = (
                    _ms(row[f"{arch}_compiled"], clock) / _ms(row[arch], clock))
        for arch in ("fpn", "ifa"):
            if row[arch].get("extra_peak_mb") is not None:
                memory[f"{arch}_{row['tag']}_extra_peak_mb_{size_tag(row['size'])}"] = row[arch]["extra_peak_mb"]
    fullres = results.get("fullres")
    if fullres:
        tag = size_tag(fullres["size"])
        by_chunk = {r["chunk_size"]: r for r in fullres["rows"]}
        default = by_chunk.get(fullres["default_chunk_size"], fullres["rows"][0])
        if default.get("extra_peak_mb") is not None:
            memory[f"fullres_extra_peak_mb_{tag}"] = default["extra_peak_mb"]
            memory["fullres_chunk_size"] = default["chunk_size"]
    paths = results.get("cpu_paths")
    if paths:
        tag = size_tag(paths["size"])
        ratios[f"head_gemm_efficiency_fp32_{tag}"] = paths["head_gflops"] / max(
            v for k, v in paths["gemm_gflops"].items() if k.endswith("fp32"))
        if tag == size_tag(FULL_SIZE):
            ratios["head_gemm_efficiency_fp32"] = ratios[f"head_gemm_efficiency_fp32_{tag}"]
        bf16 = paths["bf16"]
        if "skipped" not in bf16:
            btag = size_tag(bf16["size"])
            ratios[f"bf16_over_fp32_ifa_{btag}"] = _ms(bf16["bf16"], clock) / _ms(bf16["fp32"], clock)
            ratios[f"bf16_argmax_agreement_{btag}"] = bf16["argmax_agreement"]
    reads = results.get("reads")
    if reads:
        tag, times = size_tag(reads["size"]), reads["times"]
        for read in IFA_READS:
            ratios[f"full_over_grid_{read}_{tag}"] = _ms(times[f"{read}_full"], clock) / _ms(times[f"{read}_grid"],
                                                                                                clock)
            if read != "nearest":
                for where in ("grid", "full"):
                    ratios[f"{read}_over_nearest_{where}_{tag}"] = (_ms(times[f"{read}_{where}"], clock)
                                                                   / _ms(times[f"nearest_{where}"], clock))
    full = size_tag(FULL_SIZE)
    if f"head_speedup_{full}" in ratios:
        targets[f"head_speedup_{full} >= {TARGETS['head_speedup']}"] = (
            ratios[f"head_speedup_{full}"] >= TARGETS["head_speedup"])
    for _, tag in MODEL_BACKBONES:
        if f"ifa_over_fpn_latency_{tag}" in ratios:
            targets[f"ifa_over_fpn_latency_{tag} <= 1"] = ratios[f"ifa_over_fpn_latency_{tag}"] <= 1.0
    if "head_gemm_efficiency_fp32" in ratios:
        targets["head_gemm_efficiency_fp32 >= 0.8"] = ratios["head_gemm_efficiency_fp32"] >= 0.8
    if "bf16_over_fp32_ifa_360x480" in ratios:
        targets["bf16_over_fp32_ifa_360x480 <= 0.65"] = ratios["bf16_over_fp32_ifa_360x480"] <= 0.65
        targets["bf16_argmax_agreement_360x480 >= 0.995"] = ratios["bf16_argmax_agreement_360x480"] >= 0.995
    if f"fullres_extra_peak_mb_{full}" in memory:
        targets[f"fullres_extra_peak_mb_{full} < {TARGETS['fullres_extra_peak_mb']:.0f}"] = (
            memory[f"fullres_extra_peak_mb_{full}"] < TARGETS["fullres_extra_peak_mb"])
    return ratios, memory, targets


def all_checks(results: dict) -> dict[str, dict]:
    """Every comparison made: {description: {"max_abs_diff", "equal"}}."""
    checks = {f"head {size_tag(r['size'])} {r['precision']}: fast vs reference": {
        "max_abs_diff": r["max_abs_diff"], "equal": r["equal"]} for r in results.get("head", [])}
    for r in results.get("models", []):
        checks[f"model {r['tag']}: FPN+IFA vs its head's reference formula"] = r["ifa_vs_head_reference"]
        for arch in ("fpn", "ifa"):
            if f"{arch}_compiled_vs_eager" in r:
                checks[f"model {r['tag']}: {arch} compiled vs eager"] = r[f"{arch}_compiled_vs_eager"]
    for r in results.get("fullres", {}).get("rows", []):
        checks[f"fullres chunk {r['chunk_size']}: vs query_points"] = r["vs_query_points"]
    for read, check in results.get("reads", {}).get("vs_query_points", {}).items():
        checks[f"{read} read, every pixel: vs query_points"] = check
    return checks


def format_report(report: dict) -> str:
    clock = report["settings"]["clock"]
    results = report["results"]
    lines = [f"device {report['machine']['device']} | {report['machine']['cpu']} | "
             f"threads {report['machine']['torch_threads']} | clock {clock} (ms, median)"]

    def fmt(entry):
        return f"{_ms(entry, clock):10.1f}"

    if results.get("head"):
        lines += ["", f"{'IFA head (stride-4 grid)':<34}{'fast':>10}{'reference':>10}{'speedup':>9}{'max|diff|':>11}"]
        for r in results["head"]:
            name = f"{size_tag(r['size'])} grid {size_tag(r['grid'])} {r['precision']}"
            lines.append(f"{name:<34}{fmt(r['fast'])}{fmt(r['reference'])}"
                         f"{_ms(r['reference'], clock) / _ms(r['fast'], clock):9.2f}{r['max_abs_diff']:11.2e}")
    if results.get("models"):
        lines += ["", f"{'model':<34}{'FPN':>10}{'FPN+IFA':>10}{'ratio':>9}{'FPN MB':>9}{'IFA MB':>9}"]
        for r in results["models"]:
            mem = [r[a].get("extra_peak_mb") for a in ("fpn", "ifa")]
            name = f"{r['backbone']} {size_tag(r['size'])} {r['precision']}"
            lines.append(f"{name:<34}{fmt(r['fpn'])}{fmt(r['ifa'])}{_ms(r['ifa'], clock) / _ms(r['fpn'], clock):9.2f}"
                         + "".join(f"{m:9.0f}" if m is not None else f"{'-':>9}" for m in mem))
            if "fpn_compiled" in r:
                lines.append(f"{'  torch.compile':<34}{fmt(r['fpn_compiled'])}{fmt(r['ifa_compiled'])}"
                             f"{_ms(r['ifa_compiled'], clock) / _ms(r['fpn_compiled'], clock):9.2f}"
                             f"   (compiling took {r['fpn_compile_s']:.0f} s, {r['ifa_compile_s']:.0f} s)")
    if results.get("fullres"):
        fr = results["fullres"]
        lines += ["", f"full-resolution querying {size_tag(fr['size'])} {fr['precision']} "
                      f"(head only; the head's default chunk size here: {fr['default_chunk_size']})",
                  f"{'chunk size':<34}{'time':>10}{'extra MB':>10}"]
        for r in fr["rows"]:
            mem = r.get("extra_peak_mb")
            lines.append(f"{r['chunk_size']:<34}{fmt(r)}" + (f"{mem:10.0f}" if mem is not None else f"{'-':>10}"))
    if results.get("cpu_paths"):
        cp = results["cpu_paths"]
        lines += ["", f"CPU paths: the fast head's {cp['head_gemm_gflop']:.1f} GFLOP of products at "
                      f"{size_tag(cp['size'])} (paper widths), GFLOP/s:",
                  f"  fast head {cp['head_gflops']:.0f} | " + " | ".join(f"{k} {v:.0f}"
                                                                          for k, v in cp["gemm_gflops"].items())]
        b = cp["bf16"]
        lines.append(f"  shipped IFA {size_tag(b['size'])}: fp32 {fmt(b['fp32']).strip()} ms, bf16 "
                     f"{fmt(b['bf16']).strip()} ms, labels kept {100 * b['argmax_agreement']:.2f}%"
                     if "skipped" not in b else f"  bf16: skipped ({b['skipped']})")
    if results.get("reads"):
        rd = results["reads"]
        lines += ["", f"the head's reads, input {size_tag(rd['size'])} {rd['precision']}",
                  f"{'read':<34}{'grid':>10}{'every px':>10}"]
        for read in IFA_READS:
            lines.append(f"{read:<34}{fmt(rd['times'][f'{read}_grid'])}{fmt(rd['times'][f'{read}_full'])}")
    lines += ["", "ratios:"] + [f"  {k:<44}{v:8.3f}" for k, v in report["ratios"].items()]
    lines += ["memory:"] + [f"  {k:<44}{v:8.1f}" for k, v in report["memory"].items()]
    if report["targets"]:
        lines += ["targets:"] + [f"  {k:<44}{'met' if v else 'MISSED':>8}" for k, v in report["targets"].items()]
    bad = [name for name, c in report["checks"].items() if not c["equal"]]
    lines.append("checks: " + ("all outputs compared are equal" if not bad else "MISMATCH in " + "; ".join(bad)))
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifa.benchmark", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: CUDA when present")
    p.add_argument("--size", type=parse_size, default=None,
                   help="large input size of the head comparison and of full-resolution querying (default 1024x2048)")
    p.add_argument("--small-size", type=parse_size, default=None, help="small head size (default 360x480)")
    p.add_argument("--model-size", type=parse_size, default=None, help="input size of the whole models "
                   "(default 512x1024)")
    p.add_argument("--chunks", type=int, nargs="+", default=None,
                   help="chunk sizes (queries) of full-resolution querying, besides the head's default for the "
                        "device (default 16384 131072 524288)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="models / full-res precision (default fp32 on CPU, fp16 on CUDA; the head runs fp32 on "
                        "CPU and fp16 + bf16 on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--fullres-repeats", type=int, default=1, help="timed full-resolution calls per chunk size")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="which time the ratios use on the CPU (CUDA always uses CUDA events)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--compile", action="store_true", help="also time the whole models under torch.compile")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats: a smoke run")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    defaults = {"size": (128, 256) if quick else FULL_SIZE, "small_size": (64, 96) if quick else (360, 480),
                "model_size": (64, 128) if quick else (512, 1024),
                "chunks": [2 ** 13] if quick else [2 ** 14, 2 ** 17, 2 ** 19],
                "repeats": 2 if quick else 5}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeats < 1 or args.warmup < 0 or args.fullres_repeats < 1:
        raise ValueError("--repeats and --fullres-repeats must be >= 1, --warmup >= 0")
    if any(c < 1 for c in args.chunks):
        raise ValueError(f"chunk sizes must be positive, got {args.chunks}")
    args.chunks = [None, *args.chunks]  # None: the head's default chunk size for the device
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but CUDA is not available")
    args.device = torch.device(device)
    if args.device.type == "cpu" and args.precision not in (None, "fp32"):
        raise ValueError("the CPU benchmark runs fp32 (autocast to fp16/bf16 is a GPU path)")
    args.precision = args.precision or ("fp16" if args.device.type == "cuda" else "fp32")
    args.head_precisions = ["fp16", "bf16"] if args.device.type == "cuda" else ["fp32"]
    if args.device.type == "cuda" and args.precision not in args.head_precisions:
        args.head_precisions.insert(0, args.precision)
    if args.device.type == "cuda":
        args.clock = "wall"
    return args


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device, memory = args.device, not args.no_memory
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed sizes throughout
    machine = machine_info(device)
    steps = [p for p in PARTS if p in args.parts]
    results: dict = {}
    started = time.perf_counter()
    for part in tqdm(steps, desc="benchmark", disable=args.no_progress):
        if part == "head":
            sizes = [args.small_size] + ([args.size] if args.size != args.small_size else [])
            results["head"] = [row for size in sizes
                               for row in bench_head(size, device, args.head_precisions, args.warmup, args.repeats)]
        elif part == "models":
            results["models"] = bench_models(args.model_size, device, args.precision, args.warmup, args.repeats,
                                             memory, args.compile)
        elif part == "fullres":
            results["fullres"] = bench_fullres(args.size, device, args.precision, args.chunks, args.warmup,
                                               args.fullres_repeats, memory)
        elif part == "reads":
            results["reads"] = bench_reads(args.small_size, device, args.precision, args.warmup, args.repeats)
        elif part == "cpu_paths" and device.type == "cpu":
            results["cpu_paths"] = bench_cpu_paths(args.size, args.warmup, args.repeats, args.quick)
    if hasattr(os, "getloadavg"):
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    ratios, mem, targets = summarize(results, args.clock)
    memory_method = ("cuda max_memory_allocated - memory_allocated before the call" if device.type == "cuda" else
                     "forked process, 1 thread: VmHWM after the call - VmRSS before (malloc_trim, then "
                     "clear_refs 5 resets the high-water mark); output included")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m ifa.benchmark " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("benchmark.py")
        else "ifa.benchmark.main",
        "machine": machine,
        "settings": {"clock": args.clock, "warmup": args.warmup, "repeats": args.repeats, "quick": args.quick,
                     "compile": args.compile, "fullres_repeats": args.fullres_repeats,
                     "precision": args.precision, "head_precisions": args.head_precisions,
                     "threads": torch.get_num_threads(), "memory_method": memory_method if memory else None},
        "ratios": ratios,
        "memory": mem,
        "targets": targets,
        "checks": all_checks(results),
        "results": results,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(resolve(args))
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(c["equal"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
