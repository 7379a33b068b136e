"""Everything the app runs on a model: predictions of both models, the feature analysis, point queries.

The functions that use the GPU are module-level and take a pair spec (not a model), so that they can be
wrapped with `spaces.GPU` on a ZeroGPU Space (arguments and results cross a process boundary there: specs,
numpy arrays and plain numbers, always on the CPU). Without the `spaces` package the wrapper is the
identity. The device is CUDA (fp16 autocast) when present, else the CPU.

ZeroGPU fit: one comparison is one GPU call, `compare` (both predictions and, on a GPU, the feature
analysis), holding the slot for `gpu_seconds(...)`, a duration derived from the image size and options; the
probe runs on the CPU from the levels the analysis stored (`query_point`); importing this module allocates
nothing on the GPU (models are loaded when the app is built, by `load_pair`).

State: the device, the cache of loaded pairs (`PAIRS`), the precision and the work budget are this module's, set
from the app's settings by `configure(settings)` (AppService calls it; importing reads no environment variable: the
defaults below are AppSettings' defaults). They stay module state rather than an object's because the GPU functions
must be plain module-level functions of picklable arguments (a spec, arrays, numbers): on ZeroGPU `spaces.GPU` runs
them in a worker forked from this process, where an engine object passed as an argument would be pickled with its
models, and a bound method cannot carry the decoration. One process serves one configuration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..domain import confidence
from ..inference import Predictor, autocast_dtype, class_argmax
from .probe import softmax
from .registry import LoadedPair, PairCache, PairSpec, ifa_resolution_record

try:  # Hugging Face ZeroGPU; a no-op elsewhere
    import spaces  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    spaces = None

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PAIRS = PairCache(DEVICE, capacity=2)  # configure(): AppSettings.max_pairs, max_weights_mb
# A ZeroGPU slot is held for GPU_BASE_SECONDS + GPU_SECONDS_PER_MPX x the model input of the call (Options.work_mpx),
# at most GPU_MAX_SECONDS. Estimates, not measured on ZeroGPU: the base covers a cold CUDA context and the copy
# of both models; a GPU runs the shipped pair at far more than 1 Mpx per second.
GPU_BASE_SECONDS, GPU_SECONDS_PER_MPX, GPU_MAX_SECONDS = 10, 4, 120
# Model input one request may take (Options.work_mpx), so that one user cannot hold the queue: single-threaded
# the shipped pair takes 0.51 s for a 480x360 image (0.17 Mpx, BENCHMARKS.md), about 0.34 Mpx/s, so 2 Mpx is
# at most about 6 s of CPU; a GPU takes far more. configure(): AppSettings.max_work_mpx when set.
DEFAULT_WORK_BUDGET_MPX = {"cuda": 64.0, "cpu": 2.0}
# A pair run (Semantic FPN + IFA, one 360x480 view, CPU, 1 thread, 5 interleaved rounds) with IFA queried at every
# pixel took 4.1x (the paper's nearest read) and 5.5x (the ensemble read) the time of the paper's pair on the stride-4
# grid (0.58 s): the budget counts it 6x. (The head alone: python -m ifa.benchmark --parts reads.)
FULL_RESOLUTION_WORK = 6
WORK_BUDGET_MPX = DEFAULT_WORK_BUDGET_MPX.get(DEVICE.type, 2.0)


def gpu(duration):
    """`spaces.GPU(duration=duration)` (seconds, or a callable of the call's arguments) when the spaces package is
    importable, else the function unchanged."""
    def wrap(fn):
        return fn if spaces is None else spaces.GPU(duration=duration)(fn)
    return wrap


# AppSettings.precision (IFA_APP_PRECISION): "auto" (fp16 autocast on CUDA, fp32 on the CPU), "fp32", or "bf16" (on
# CUDA, or on CPUs with native bf16: about half the fp32 time there, labels as fp32's on 99.7-99.8% of the pixels;
# ifa.inference).
PRECISION = "auto"
AMP_DTYPE = autocast_dtype(DEVICE, PRECISION)


def configure(settings) -> None:
    """Set this module's state from the app's settings (an ifa.app.settings.AppSettings): the pair cache's capacity
    and download limit, the precision (a ValueError names one this machine lacks) and the work budget. The loaded
    pairs are kept when the cache's settings do not change."""
    global PAIRS, PRECISION, AMP_DTYPE, WORK_BUDGET_MPX
    amp_dtype = autocast_dtype(DEVICE, settings.precision)
    PRECISION, AMP_DTYPE = settings.precision, amp_dtype
    WORK_BUDGET_MPX = float(settings.max_work_mpx or DEFAULT_WORK_BUDGET_MPX.get(DEVICE.type, 2.0))
    if (PAIRS.capacity, PAIRS.max_weights_bytes) != (max(1, settings.max_pairs), settings.max_weights_bytes):
        PAIRS = PairCache(DEVICE, capacity=settings.max_pairs, max_weights_bytes=settings.max_weights_bytes)


def device_description() -> str:
    precision = {None: "fp32", torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast"}[AMP_DTYPE]
    if DEVICE.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(DEVICE)}, {precision})"
    return f"CPU ({torch.get_num_threads()} threads, {precision})"


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def _autocast():
    return torch.autocast(DEVICE.type, dtype=AMP_DTYPE, enabled=AMP_DTYPE is not None)


def load_pair(spec: PairSpec) -> LoadedPair:
    """Load (or fetch from the cache) a pair of models on DEVICE."""
    return PAIRS.get(spec)


def pair_summary(spec: PairSpec) -> dict:
    """The pair as JSON (catalog, every summary) with "ifa_resolution": its IFA card's record, which the app defaults
    to (`ifa_resolution_record`: the loaded pair's, or a local card's; a Hub pair not loaded yet is not fetched)."""
    return {**spec.summary(), "ifa_resolution": ifa_resolution_record(spec, PAIRS.peek(spec.id))}


@dataclass
class Options:
    """Inference options of one run."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    ifa_resolution: str = "stride4"  # or "full"

    def work_mpx(self, height: int, width: int) -> float:
        """Model input processed by one run, in megapixels: the image at every scale, twice with flip; IFA
        queried at every pixel counts FULL_RESOLUTION_WORK times."""
        views = sum(s * s for s in self.scales) * (2 if self.flip else 1)
        return height * width * views * (FULL_RESOLUTION_WORK if self.ifa_resolution == "full" else 1) / 1e6

    def within(self, height: int, width: int, budget_mpx: float) -> tuple[Options, list[str]]:
        """These options reduced until a run fits `budget_mpx` (full resolution first, then the flip, then the
        largest scales; a lone scale still too large becomes 1.0), and a notice saying what was dropped and why."""
        scales, flip, resolution, dropped = list(self.scales), self.flip, self.ifa_resolution, []

        def over() -> bool:
            return Options(tuple(scales), flip, resolution).work_mpx(height, width) > budget_mpx

        if over() and resolution == "full":
            resolution = "stride4"
            dropped.append("full-resolution IFA")
        if over() and flip:
            flip = False
            dropped.append("the flip")
        while over() and len(scales) > 1:
            dropped.append(f"scale {scales.pop():g}")
        if over() and scales != [1.0]:
            dropped.append(f"scale {scales.pop():g} (1.0 used instead)")
            scales = [1.0]
        options = Options(tuple(scales), flip, resolution)
        if not dropped:
            return options, []
        return options, [f"{', '.join(dropped)} dropped: this request asked for {self.work_mpx(height, width):.1f} "
                         f"Mpx of model input, more than the {budget_mpx:g} Mpx one request may take here "
                         f"({options.describe()})"]

    def describe(self) -> str:
        scales = ", ".join(f"{s:g}" for s in self.scales)
        res = "queried at every pixel" if self.ifa_resolution == "full" else "stride-4 grid + bilinear upsampling"
        return f"scales {scales}{' + flip' if self.flip else ''}; IFA output {res}"


@dataclass
class HeadInside:
    """What a head computed on its grid (h, w) for one image (SegmentationModel.inspect), on the CPU."""

    level_norms: np.ndarray  # (L, h, w) float32 each level's contribution norm
    features: np.ndarray  # (D, h, w) float16 the last features before the classifier (kept for the PCA view)
    logits: np.ndarray  # (K, h, w) float32 grid logits

    @classmethod
    def of(cls, inside) -> HeadInside:
        """From a batch-of-one HeadIntermediates."""
        return cls(inside.level_norms[0].float().cpu().numpy(), inside.features[0].half().cpu().numpy(),
                   inside.logits[0].float().cpu().numpy())


@dataclass
class ModelOutput:
    labels: np.ndarray  # (H, W) uint8 class per pixel
    # (K, H, W) float16: the logits of a single pass (`logits`), else the class probabilities averaged over scales
    # and flips; `probs_at` reads probabilities from either.
    scores: np.ndarray
    seconds: float  # wall time of the prediction on DEVICE, pre- and post-processing included
    # Of a scale-1 unflipped stride-4 run: the head's inputs, (C, h_l, w_l) float32 per level, and (when the run
    # was asked to keep it) the head's inside from the same pass.
    head_inputs: list[np.ndarray] | None = None
    inside: HeadInside | None = None
    logits: bool = False
    confidence: float | None = None  # ifa.domain.confidence: mean over pixels of the top class probability

    def probs_at(self, y: int, x: int) -> np.ndarray:
        """(K,) float32 class probabilities at pixel (x, y) (a single pass: the softmax of its logits there; a
        compacted output: its uint8 probabilities / 255, renormalised)."""
        values = self.scores[:, y, x].astype(np.float32)
        if self.scores.dtype == np.uint8:
            return values / max(float(values.sum()), 1e-6)
        return softmax(values) if self.logits else values

    def compacted(self, levels_fp16: bool = False) -> ModelOutput:
        """This output as a stored run keeps it: the scores as uint8 class probabilities (x 255, computed in row
        chunks; half the bytes of float16), and with `levels_fp16` the head inputs in float16 (`compact_levels`)."""
        if self.scores.dtype == np.uint8:
            return dataclasses.replace(self, head_inputs=compact_levels(self.head_inputs)) if levels_fp16 else self
        probs = np.empty(self.scores.shape, np.uint8)
        for top in range(0, self.scores.shape[1], 128):
            rows = self.scores[:, top:top + 128].astype(np.float32)
            if self.logits:
                rows = np.exp(rows - rows.max(0, keepdims=True))
                rows /= rows.sum(0, keepdims=True)
            probs[:, top:top + 128] = np.rint(np.clip(rows, 0, 1) * 255)
        return dataclasses.replace(self, scores=probs, logits=False,
                                   head_inputs=compact_levels(self.head_inputs) if levels_fp16 else self.head_inputs)


def compact_levels(levels: list[np.ndarray] | None) -> list[np.ndarray] | None:
    """Head inputs (C, h_l, w_l) as a stored run keeps them: float16 (half the bytes; read back as float32)."""
    return None if levels is None else [lv.astype(np.float16, copy=False) for lv in levels]


def _levels_tensor(level: np.ndarray) -> torch.Tensor:
    """A stored head input (C, h, w), float16 or float32, as a float32 (1, C, h, w) batch on DEVICE."""
    return torch.from_numpy(level)[None].to(DEVICE).float()


@dataclass
class FeatureAnalysis:
    """Single-scale, unflipped look inside both models (what the 'Feature alignment' tab shows)."""

    padded_size: tuple[int, int]  # (H, W) the models saw (HRNet pads to a multiple of 32)
    ifa_level_sizes: list[tuple[int, int]]
    ifa_read: str  # how the IFA head reads its levels (ifa.models.ifa.IFA_READS; "nearest" is the paper's)
    fpn_grid_size: tuple[int, int]  # the baseline's stride-4 logit grid (h_1, w_1)
    fpn_grid_logits: np.ndarray  # (K, h_1, w_1) float32
    ifa_levels: list[np.ndarray]  # IFA head inputs (C, h_l, w_l) float32, for point queries
    ifa_shares: np.ndarray  # (L, h, w): per-pixel share of each level's first-layer term norm
    fpn_shares: np.ndarray  # (L, h_1, w_1): per-pixel share of each level's branch norm
    ifa_features: np.ndarray | None  # (D, h, w) float16 IFA last hidden features (stride-4 grid or full size)
    fpn_features: np.ndarray | None  # (D, h_1, w_1) float16 the baseline's summed stride-4 features
    ifa_query_size: tuple[int, int]  # (h, w) grid the IFA shares / features were queried on
    seconds: float


def _labels(scores: torch.Tensor) -> np.ndarray:
    """(H, W) argmax over the classes of (K, H, W) probabilities or logits."""
    labels = class_argmax(scores, 0).numpy()
    return labels.astype(np.uint8 if scores.shape[0] <= 255 else np.int32)


def _predict(model, image: np.ndarray, options: Options, ifa_resolution: str, inspect: bool = False
             ) -> ModelOutput:
    """One model on one image. At scale 1 unflipped on the stride-4 grid (the default), one pass whose head inputs
    are kept, and with `inspect` the head's inside too (its logits are then the prediction's: one head pass);
    otherwise the Predictor's views (scales, flip, full resolution)."""
    predictor = Predictor(model, device=DEVICE, precision=PRECISION, scales=options.scales, flip=options.flip,
                          ifa_resolution=ifa_resolution)
    _sync()
    start = time.perf_counter()
    head_inputs = inside = None
    single = options.scales == (1.0,) and not options.flip and ifa_resolution == "stride4"
    if single:  # labels are the argmax of the logits: no softmax over the full-size maps
        with torch.inference_mode(), _autocast():
            x = _model_input(predictor, image, model)
            levels = model.levels(x)
            if inspect:
                inside = model.inspect(levels)
            grid = inside.logits if inspect else model.head_logits(levels)
            scores = model.upsample_logits(grid, image.shape[:2])[0].float().cpu()
        head_inputs = [lv[0].float().cpu().numpy() for lv in levels]
        inside = HeadInside.of(inside) if inspect else None
    else:
        scores = predictor.probabilities(predictor.preprocess(image))[0].cpu()
    labels = _labels(scores)
    _sync()
    seconds = time.perf_counter() - start
    return ModelOutput(labels, scores.half().numpy(), seconds, head_inputs, inside, logits=single,
                       confidence=confidence(scores, logits=single))


def _model_input(predictor: Predictor, image: np.ndarray, model) -> torch.Tensor:
    """The normalised, padded (size divisor) image in the models' memory layout: (1, 3, H', W')."""
    layout = torch.channels_last if predictor.channels_last else torch.contiguous_format
    return _pad(predictor.preprocess(image), model.size_divisor).contiguous(memory_format=layout)


def gpu_seconds(spec: PairSpec, image: np.ndarray, options: Options, analyse: bool | None = None) -> int:
    """Seconds of GPU one `compare` call may hold: a base plus a rate times its model input (analysis: +50%)."""
    mpx = options.work_mpx(*image.shape[:2]) * (1.5 if (ANALYSE_IN_COMPARE if analyse is None else analyse) else 1)
    return int(min(GPU_MAX_SECONDS, math.ceil(GPU_BASE_SECONDS + GPU_SECONDS_PER_MPX * mpx)))


# On a GPU the analysis joins the prediction's call (one slot per comparison); on the CPU it waits until the
# Feature alignment tab asks, so that the side-by-side view comes first.
ANALYSE_IN_COMPARE = DEVICE.type == "cuda"


@gpu(gpu_seconds)
def compare(spec: PairSpec, image: np.ndarray, options: Options, analyse: bool | None = None
            ) -> tuple[ModelOutput, ModelOutput, FeatureAnalysis | None]:
    """(baseline output, IFA output, feature analysis or None) for a uint8 RGB image, in one GPU call; the
    analysis is computed when `analyse` (default: ANALYSE_IN_COMPARE). Unless `analyse` is False the outputs keep
    the heads' inside (a later `analyse` call then runs no model)."""
    wanted = ANALYSE_IN_COMPARE if analyse is None else analyse
    baseline, ifa = _predict_pair(spec, image, options, inspect=analyse is not False)
    return baseline, ifa, (_analyse(spec, image, options.ifa_resolution, baseline, ifa) if wanted else None)


def _predict_pair(spec: PairSpec, image: np.ndarray, options: Options, inspect: bool
                  ) -> tuple[ModelOutput, ModelOutput]:
    pair = PAIRS.get(spec)
    baseline = _predict(pair.baseline, image, options, "stride4", inspect)
    ifa_res = options.ifa_resolution if pair.ifa.is_ifa else "stride4"
    return baseline, _predict(pair.ifa, image, options, ifa_res, inspect)


def _pad(x: torch.Tensor, divisor: int) -> torch.Tensor:
    pad_h, pad_w = -x.shape[-2] % divisor, -x.shape[-1] % divisor
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _shares(norms: np.ndarray) -> np.ndarray:
    """(L, h, w) per-level norms -> per-pixel shares summing to 1 (uniform where all are 0)."""
    total = norms.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, norms / np.maximum(total, 1e-12), 1 / norms.shape[0]).astype(np.float32)


def _inside(model, output: ModelOutput | None, image: np.ndarray, size: tuple[int, int] | None
            ) -> tuple[HeadInside, list[np.ndarray]]:
    """(the head's inside, its inputs (C, h_l, w_l) per level): what the run kept when it serves (no other grid
    asked), else computed from the run's head inputs, else from a scale-1 pass (the model's own normalisation)."""
    kept = output.head_inputs if output is not None else None
    if kept is not None and output.inside is not None and size is None:
        return output.inside, kept
    levels = ([_levels_tensor(lv) for lv in kept] if kept is not None
              else model.levels(_model_input(Predictor(model, device=DEVICE), image, model)))
    inside = HeadInside.of(model.inspect(levels, size if model.is_ifa else None))
    return inside, [lv[0].float().cpu().numpy() for lv in levels]


@gpu(GPU_MAX_SECONDS // 2)
def analyse(spec: PairSpec, image: np.ndarray, ifa_resolution: str, baseline: ModelOutput | None = None,
            ifa: ModelOutput | None = None) -> FeatureAnalysis:
    """The feature analysis of a run whose `compare` call did not include it (its own GPU call)."""
    return _analyse(spec, image, ifa_resolution, baseline, ifa)


def _analyse(spec: PairSpec, image: np.ndarray, ifa_resolution: str, baseline: ModelOutput | None = None,
             ifa: ModelOutput | None = None, max_full_queries: int = 1_100_000) -> FeatureAnalysis:
    """Level contributions, final features and the baseline's stride-4 logits at scale 1, unflipped: what the run
    kept of its heads (`baseline`, `ifa` outputs of a default run), else from the head inputs it kept, else from
    a scale-1 pass.

    IFA's shares and features are queried on the stride-4 grid, or at every pixel when
    ifa_resolution is "full" (and the image has at most `max_full_queries` pixels).
    """
    pair = PAIRS.get(spec)
    _sync()
    start = time.perf_counter()
    padded = pair.ifa.padded_size(image.shape[:2])
    full = ifa_resolution == "full" and pair.ifa.is_ifa and math.prod(padded) <= max_full_queries
    with torch.inference_mode(), _autocast():
        fpn, _ = _inside(pair.baseline, baseline, image, None)
        ifa_inside, ifa_levels = _inside(pair.ifa, ifa, image, padded if full else None)
    _sync()
    return FeatureAnalysis(
        padded_size=padded, ifa_level_sizes=[tuple(lv.shape[-2:]) for lv in ifa_levels],
        ifa_read=pair.ifa.config.ifa_read if pair.ifa.is_ifa else "nearest",
        fpn_grid_size=tuple(fpn.logits.shape[-2:]), fpn_grid_logits=fpn.logits, ifa_levels=ifa_levels,
        ifa_shares=_shares(ifa_inside.level_norms), fpn_shares=_shares(fpn.level_norms),
        ifa_features=ifa_inside.features, fpn_features=fpn.features,
        ifa_query_size=tuple(ifa_inside.features.shape[-2:]), seconds=time.perf_counter() - start)


@gpu(GPU_MAX_SECONDS // 4)
def offset_ablation(spec: PairSpec, levels: list[np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The IFA model's labels (H, W) of a size-(H, W) image from its stored head inputs `levels` (scale 1,
    stride-4 grid + upsampling): "as trained", "all levels" (every offset fed to its encoding as 0) and
    "level l" (only level l's, l = 1..L). Only the head runs: no backbone pass."""
    model = PAIRS.get(spec).ifa
    with torch.inference_mode(), _autocast():
        feats = [_levels_tensor(lv) for lv in levels]

        def labels() -> np.ndarray:
            return _labels(model.upsample_logits(model.head_logits(feats).float(), size)[0].cpu())

        out = {"as trained": labels()}
        with model.offsets_zeroed():
            out["all levels"] = labels()
        for level in range(len(feats)):
            with model.offsets_zeroed([level]):
                out[f"level {level + 1}"] = labels()
    return out


def query_point(spec: PairSpec, levels: list[np.ndarray], coords: np.ndarray) -> np.ndarray:
    """IFA class probabilities (N, K) at normalised (y, x) points coords (N, 2), from stored head inputs; on the
    CPU (the pair's fp32 CPU copy of the IFA head), so a probe never waits for a GPU slot."""
    head = PAIRS.get(spec).cpu_ifa_head
    with torch.inference_mode():
        feats = [torch.from_numpy(lv)[None].float() for lv in levels]
        q = torch.from_numpy(np.asarray(coords, dtype=np.float32))[None]
        logits = head.query_points(feats, q)[0].float()  # (K, N)
    return logits.softmax(0).T.numpy()
