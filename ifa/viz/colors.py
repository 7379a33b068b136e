"""Label maps to colours: colorize and overlay (uint8 RGB (H, W, 3) out)."""

from __future__ import annotations

import numpy as np

from ..compare import BOTH_WRONG, IFA_BROKE, IFA_FIXED, UNKNOWN

# Colours of the difference verdicts (ifa.compare): green = IFA fixed it, red = IFA broke it, orange = both
# wrong, blue = unknown (no ground truth).
VERDICT_COLORS = {IFA_FIXED: (40, 200, 70), IFA_BROKE: (230, 40, 40), BOTH_WRONG: (255, 140, 0),
                  UNKNOWN: (70, 150, 255)}


def colorize(labels: np.ndarray, palette, ignore_index: int = 255, ignore_color=(0, 0, 0)) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 using palette (K, 3); ignored/out-of-range pixels get ignore_color."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = ignore_color
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:ignore_index]
    lut[:len(pal)] = pal
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.5, ignore_index: int = 255,
            visible: np.ndarray | None = None) -> np.ndarray:
    """Blend colorize(labels) over image (H, W, 3) uint8 with opacity alpha; ignored pixels (and pixels
    whose class is not in the boolean `visible` (K,) mask) keep the image."""
    colors = colorize(labels, palette, ignore_index).astype(np.float32)
    mask = labels != ignore_index
    if visible is not None:
        mask &= np.asarray(visible, dtype=bool)[np.clip(labels, 0, len(visible) - 1)]
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colors[mask]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
