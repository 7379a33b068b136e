"""Training augmentation (the paper's recipe) and normalisation, as torch ops on single samples.

Images enter as uint8 (H, W, 3) numpy, labels as (H, W) with 255 = ignore. Outputs are a
normalised float tensor (3, h, w) and an int64 label tensor (h, w). Randomness comes only from
the numpy Generator passed in, so a sample's augmentation depends on its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) on the 0-255 scale."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float()


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """(..., 3, H, W) on 0-255 -> (x - mean) / std per channel."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean_t) / std_t


@dataclass
class TrainAugment:
    """Random scale, pad (image 0 after normalisation = mean, label = ignore), random crop, flip,
    optional photometric jitter (brightness / contrast / saturation).

    The random scale s (uniform in `scale_range`) multiplies a base size: the image's own size by
    default, the fixed `base_size` (H, W), or with `img_scale` (long, short) the largest
    ratio-preserving size whose long side is at most `long` and short side at most `short`
    (mmsegmentation's Resize with ratio_range: ADE20K's (2048, 512)).
    """

    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None  # (H, W) the scale is relative to; None = the image's own
    img_scale: tuple[int, int] | None = None  # (long side, short side) bounds of a ratio-preserving base size
    flip: bool = True
    photometric: bool = False
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.base_size is not None and self.img_scale is not None:
            raise ValueError("give base_size or img_scale, not both")

    def base(self, height: int, width: int) -> tuple[float, float]:
        """The (H, W) that the random scale multiplies, for an image of size (height, width)."""
        if self.base_size is not None:
            return self.base_size
        if self.img_scale is not None:
            long_side, short_side = max(self.img_scale), min(self.img_scale)
            ratio = min(long_side / max(height, width), short_side / min(height, width))
            return height * ratio, width * ratio
        return height, width

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 crop_size: tuple[int, int] | None = None):
        """One augmented sample; `crop_size` (H, W) overrides the configured crop (e.g. a per-batch random size)."""
        img = to_tensor(image)
        lab = torch.from_numpy(label.astype(np.int64))
        base_h, base_w = self.base(*img.shape[-2:])
        scale = rng.uniform(*self.scale_range)
        size = (max(1, round(base_h * scale)), max(1, round(base_w * scale)))
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
        lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if self.photometric:
            img = _jitter(img, rng)
        img = normalize(img, self.mean, self.std)
        crop_h, crop_w = crop_size or self.crop_size
        pad_h, pad_w = max(0, crop_h - size[0]), max(0, crop_w - size[1])
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h), value=0.0)
            lab = F.pad(lab, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(rng.integers(0, img.shape[1] - crop_h + 1))
        left = int(rng.integers(0, img.shape[2] - crop_w + 1))
        img = img[:, top:top + crop_h, left:left + crop_w]
        lab = lab[top:top + crop_h, left:left + crop_w]
        if self.flip and rng.random() < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        return img.contiguous(), lab.contiguous()


def _jitter(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [0.75, 1.25] on a 0-255 image."""
    b, c, s = rng.uniform(0.75, 1.25, size=3)
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    gray = img.mean(dim=0, keepdim=True)
    img = (img - gray) * s + gray
    return img.clamp(0, 255)
