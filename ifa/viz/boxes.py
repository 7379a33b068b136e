"""Difference regions drawn as the paper's figures do: yellow boxes, optionally over verdict colours."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .colors import VERDICT_COLORS
from .draw import YELLOW, label_box


def draw_boxes(image: np.ndarray, regions, color=YELLOW, width: int | None = None, numbers: bool = True) -> np.ndarray:
    """Yellow rectangles around `regions` (ifa.compare.DifferenceRegion, box = (top, left, bottom, right)),
    numbered 1..n in the given order. Returns a new uint8 image."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    width = width or max(2, round(max(image.shape[:2]) / 320))
    h, w = image.shape[:2]
    for rank, region in enumerate(regions, start=1):
        top, left, bottom, right = region.box
        x0, y0 = max(0, left - 1), max(0, top - 1)
        x1, y1 = min(w - 1, right), min(h - 1, bottom)
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        if numbers:
            ty = y0 - 18 if y0 >= 18 else min(y1 + 1, h - 18)
            label_box(draw, (x0, ty), str(rank), fill=color, color=(0, 0, 0), size=12, pad=1)
    return np.asarray(canvas)


def verdict_image(image: np.ndarray, verdicts: np.ndarray, regions, dim: float = 0.45) -> np.ndarray:
    """The image dimmed, every disagreeing pixel painted in its verdict colour, regions boxed in yellow."""
    out = image.astype(np.float32) * dim + 255 * (1 - dim) * 0.15
    for verdict, color in VERDICT_COLORS.items():
        mask = verdicts == verdict
        if mask.any():
            out[mask] = 0.15 * out[mask] + 0.85 * np.asarray(color, dtype=np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return draw_boxes(out, regions)
