"""Label maps to colours: colorize and overlay (uint8 RGB (H, W, 3) out)."""

from __future__ import annotations

import numpy as np

from ..compare import BOTH_WRONG, IFA_BROKE, IFA_FIXED, UNKNOWN

# Colours of the difference verdicts (ifa.compare): green = IFA fixed it, red = IFA broke it, orange = both
# wrong, blue = unknown (no ground truth).
VERDICT_COLORS = {IFA_FIXED: (40, 200, 70), IFA_BROKE: (230, 40, 40), BOTH_WRONG: (255, 140, 0),
                  UNKNOWN: (70, 150, 255)}


def _color_lut(palette, ignore_index: int = 255, ignore_color=(0, 0, 0)) -> np.ndarray:
    """(256, 3) uint8: the colour of every label value; ignored / out-of-range values get ignore_color."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = ignore_color
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:ignore_index]
    lut[:len(pal)] = pal
    return lut


def _lut_index(labels: np.ndarray) -> np.ndarray:
    return labels if labels.dtype == np.uint8 else np.clip(labels, 0, 255).astype(np.uint8)


def colorize(labels: np.ndarray, palette, ignore_index: int = 255, ignore_color=(0, 0, 0)) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 using palette (K, 3); ignored/out-of-range pixels get ignore_color."""
    return _color_lut(palette, ignore_index, ignore_color)[_lut_index(labels)]


def overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.5, ignore_index: int = 255,
            visible: np.ndarray | None = None) -> np.ndarray:
    """Blend colorize(labels) over image (H, W, 3) uint8 with opacity alpha; ignored pixels (and pixels
    whose class is not in the boolean `visible` (K,) mask) keep the image.

    Per pixel round((1 - alpha) * image + alpha * colour) in float32, read from a table of all (image value,
    colour value) pairs; colours and the drawn / kept choice come from 256-entry tables of the label value (label
    values above 255 count as 255)."""
    drawn = np.zeros(256, dtype=np.uint8)
    drawn[:ignore_index] = 1
    if visible is not None:
        shown = np.asarray(visible, dtype=bool)[:256]
        drawn[:len(shown)] &= shown
        drawn[len(shown):] &= bool(shown[-1]) if len(shown) else False
    # One 4-byte gather per pixel gives its colour and whether it is drawn (np.take on uint32, much faster than
    # fancy indexing of a (256, 3) table; BENCHMARKS.md).
    lut = np.concatenate([_color_lut(palette, ignore_index), drawn[:, None]], axis=1)  # (256, 4) uint8
    looked_up = np.take(lut.view(np.uint32).ravel(), _lut_index(labels)).view(np.uint8)  # (H, W * 4)
    looked_up = looked_up.reshape(*labels.shape, 4)
    value = np.arange(256, dtype=np.float32)
    table = np.float32(1 - alpha) * value[:, None] + np.float32(alpha) * value[None, :]
    table = np.clip(table + np.float32(0.5), 0, 255).astype(np.uint8).reshape(-1)  # [image value * 256 + colour]
    blended = np.take(table, (image.astype(np.uint16) << 8) | looked_up[..., :3])
    kept = looked_up[..., 3] == 0
    if kept.any():
        np.copyto(blended, image, where=kept[..., None])
    return blended
