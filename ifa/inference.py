"""Predictor: device, precision, normalisation, whole-image / sliding-window, multi-scale and flip.

Images are uint8 (H, W, 3) RGB numpy arrays (or PIL images); results are at the image's size:
labels (H, W) int64 and class probabilities (K, H, W) float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.transforms import normalize, to_tensor
from .models.segmentor import SegmentationModel

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MODES = ("whole", "slide", "reference")
# The reference code's evaluation (mode "reference"): long side resized to 2048 x scale, 769 x 769 windows.
REFERENCE_LONG_SIDE = 2048
REFERENCE_WINDOW = (769, 769)
IFA_RESOLUTIONS = ("stride4", "full")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_supports_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 / AMX), not emulated."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype a Predictor runs `precision` at on `device` (None: fp32). "auto" is fp16 on CUDA and
    fp32 on the CPU; on the CPU "bf16" needs native bf16 and "fp16" is refused (ValueError, saying why)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "fp16":
        raise ValueError(f"precision fp16 runs on CUDA only; on the {device.type} use fp32 or bf16")
    if device.type != "cpu" or not cpu_supports_bf16():
        raise ValueError(f"precision bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); this {device.type} "
                         f"has none: use fp32")
    return torch.bfloat16


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) int64 class index per pixel
    probs: torch.Tensor  # (K, H, W) float32 class probabilities, on the CPU


def _placed(model: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """The model on `device` (4-D weights in channels_last when asked), moved only when it is not there yet: a model
    kept resident (the app's) is not walked again by `.to` for every prediction. `.to` moves every parameter
    together, so the first parameter and the first 4-D one tell (checking all of them would cost every prediction
    a walk over the model)."""
    first = next(model.parameters(), None)
    if first is None:
        return model
    on_device = first.device.type == device.type and device.index in (None, first.device.index)
    weight = next((p for p in model.parameters() if p.dim() == 4), None) if channels_last else None
    if on_device and (weight is None or weight.is_contiguous(memory_format=torch.channels_last)):
        return model
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


class Predictor:
    """Runs a SegmentationModel on images of any size.

    precision: "auto" = fp16 autocast on CUDA, fp32 on CPU; "bf16" runs bf16 autocast on CUDA and on CPUs with
    native bf16 (opt-in there: faster than fp32 on the CPUs measured, with labels as fp32's on all but a fraction
    of a percent of the pixels; the measurements are in BENCHMARKS.md).

    mode "slide" uses `window` crops with
    `stride` (default 2/3 of the window). scales multiply the image size; flip adds left-right
    flipped copies; probabilities are averaged over all views (the project's protocol).

    mode "reference" is the reference code's evaluation protocol instead: per scale s the image is
    resized (bilinear, align_corners=True) so that its long side is `long_side` x s (2048 x s), windows
    of `window` (769 x 769) slide with stride ceil(2/3 x window) (513), the last one flush with the
    end; a window larger than the image is not shrunk: the image part is padded at the bottom and right
    with the mean colour; each window's softmax (averaged with its flipped copy's, flipped back, when
    `flip`: flip per window) is cropped to the image part and averaged where windows overlap; each
    scale's probabilities are resized back (align_corners=True) and averaged over scales.

    ifa_resolution "full" queries the IFA head at every pixel instead of upsampling the stride-4 grid
    (IFA models only).

    The model is used in place, not copied: the Predictor moves the caller's `model` to `device`, converts its 4-D
    weights to channels_last when that is on, and puts it in eval mode (`self.model is model`), so a model kept
    resident (the app's) is moved once, and the caller's model is changed. To keep the original as it was, pass
    a copy: `Predictor(copy.deepcopy(model), ...)`.

    channels_last (default on CUDA, and on CPUs where PyTorch has oneDNN, where it was faster for the shipped
    models with identical labels, BENCHMARKS.md) runs the convolutions in NHWC;
    cuDNN autotunes for the fixed sizes it sees (`cudnn.benchmark`, set on
    CUDA), and everything runs under inference_mode. compile=True wraps the model's forward in
    torch.compile (a string names the backend, e.g. "eager" to check the capture cheaply); the
    full-resolution IFA path stays eager.
    """

    def __init__(self, model: SegmentationModel, device: str | torch.device | None = None,
                 precision: str = "auto", mode: str = "whole", window: tuple[int, int] | None = None,
                 stride: tuple[int, int] | None = None, scales: tuple[float, ...] = (1.0,), flip: bool = False,
                 ifa_resolution: str = "stride4", channels_last: bool | None = None, compile: bool | str = False,
                 long_side: int = REFERENCE_LONG_SIDE):
        for value, valid, what in ((precision, PRECISIONS, "precision"), (mode, MODES, "mode"),
                                   (ifa_resolution, IFA_RESOLUTIONS, "ifa_resolution")):
            if value not in valid:
                raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
        if ifa_resolution == "full" and not model.is_ifa:
            raise ValueError("ifa_resolution='full' needs an IFA model")
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive, got {scales}")
        self.device = torch.device(device) if device is not None else default_device()
        if channels_last is None:
            channels_last = self.device.type == "cuda" or (self.device.type == "cpu"
                                                          and torch.backends.mkldnn.is_available())
        self.channels_last = channels_last
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.model = _placed(model, self.device, channels_last)
        if self.model.training:  # eval() walks every module, for every predictor the app makes
            self.model.eval()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._forward = self.model
        if compile:
            self._forward = torch.compile(self.model, **({"backend": compile} if isinstance(compile, str) else {}))
        self.precision = precision
        self.mode = mode
        self.window = tuple(window) if window else (REFERENCE_WINDOW if mode == "reference" else (512, 512))
        if stride:
            self.stride = tuple(stride)
        elif mode == "reference":
            self.stride = tuple(math.ceil(w * 2 / 3) for w in self.window)
        else:
            self.stride = tuple(max(1, w * 2 // 3) for w in self.window)
        self.long_side = long_side
        self.scales = tuple(scales)
        self.flip = flip
        self.ifa_resolution = ifa_resolution

    @property
    def config(self):
        return self.model.config

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def preprocess(self, image) -> torch.Tensor:
        """uint8 (H, W, 3) RGB (or PIL) -> normalised (1, 3, H, W) on the device."""
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        x = to_tensor(image).to(self.device)
        return normalize(x, self.config.mean, self.config.std)[None]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, h, w) at x's size for one view."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.ifa_resolution == "full":
            padded = self.model._pad(x)
            return self.model.predict_grid(padded, padded.shape[-2:])[..., :x.shape[-2], :x.shape[-1]]
        return self._forward(x)

    def _slide(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        wh, ww = min(self.window[0], h), min(self.window[1], w)
        sh, sw = self.stride
        logits = counts = None
        for top in _starts(h, wh, sh):
            for left in _starts(w, ww, sw):
                out = self._run(x[..., top:top + wh, left:left + ww]).float()
                if logits is None:
                    logits = x.new_zeros((x.shape[0], out.shape[1], h, w), dtype=torch.float32)
                    counts = x.new_zeros((1, 1, h, w), dtype=torch.float32)
                logits[..., top:top + wh, left:left + ww] += out
                counts[..., top:top + wh, left:left + ww] += 1
        return logits / counts

    def _reference_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Mode "reference" at one scale: window-averaged probabilities (B, K, H, W) of x (B, 3, H, W)."""
        h, w = x.shape[-2:]
        (th, tw), (sh, sw) = self.window, self.stride
        probs = counts = None
        for row in range(max(1, math.ceil((h - th) / sh) + 1)):
            for col in range(max(1, math.ceil((w - tw) / sw) + 1)):
                y2, x2 = min(row * sh + th, h), min(col * sw + tw, w)
                y1, x1 = max(y2 - th, 0), max(x2 - tw, 0)
                tile = x[..., y1:y2, x1:x2]
                views = [(tile, False)] + ([(tile.flip(-1), True)] if self.flip else [])
                out = 0
                for view, flipped in views:
                    padded = F.pad(view, (0, tw - view.shape[-1], 0, th - view.shape[-2]))  # 0 = the mean colour
                    p = self._run(padded).float().softmax(dim=1)[..., :y2 - y1, :x2 - x1]
                    out = out + (p.flip(-1) if flipped else p)
                if probs is None:
                    probs = x.new_zeros((x.shape[0], out.shape[1], h, w), dtype=torch.float32)
                    counts = x.new_zeros((1, 1, h, w), dtype=torch.float32)
                probs[..., y1:y2, x1:x2] += out / len(views)
                counts[..., y1:y2, x1:x2] += 1
        return probs / counts

    def _reference_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        total = 0
        for scale in self.scales:
            ratio = self.long_side * scale / max(h, w)
            size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            with self._autocast():
                probs = self._reference_windows(xs)
            total = total + F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=True)
        return total / len(self.scales)

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Averaged class probabilities (B, K, H, W) float32 for a normalised batch x (B, 3, H, W)."""
        if self.mode == "reference":
            return self._reference_probabilities(x)
        h, w = x.shape[-2:]
        total = None
        for scale in self.scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in ((False, True) if self.flip else (False,)):
                view = xs.flip(-1) if flipped else xs
                with self._autocast():
                    logits = self._slide(view) if self.mode == "slide" else self._run(view)
                logits = logits.float()
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probs = logits.softmax(dim=1)
                total = probs if total is None else total + probs
        views = len(self.scales) * (2 if self.flip else 1)
        return total / views if views > 1 else total  # one view: no extra pass over (B, K, H, W)

    def predict(self, image) -> Prediction:
        """Label map and probabilities for one uint8 RGB image at its own size."""
        probs = self.probabilities(self.preprocess(image))[0]
        return Prediction(labels=class_argmax(probs, 0).cpu().numpy().astype(np.int64), probs=probs.cpu())


def class_argmax(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """The argmax of class scores along `dim` (the first of ties, as torch.argmax): by `max(dim).indices`, which
    was faster than `argmax(dim)` on CPU probabilities of the app's size (BENCHMARKS.md)."""
    return scores.max(dim).indices


def _starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins covering [0, size) with the last window flush with the end."""
    starts = list(range(0, max(size - window, 0) + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts
