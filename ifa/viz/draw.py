"""Small drawing helpers shared by the viz modules: fonts, labelled tiles, colour maps (arrays in/out)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

YELLOW = (255, 221, 0)
# One colour per pyramid level (strides 4, 8, 16, 32), readable on photos and on each other.
LEVEL_COLORS = ((0, 200, 255), (60, 220, 60), (255, 150, 0), (255, 40, 200))


@lru_cache(maxsize=8)
def font(size: int = 13) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, size: int = 13) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font(size))
    return right - left, bottom - top


def label_box(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill=(0, 0, 0),
              color=(255, 255, 255), size: int = 13, pad: int = 2) -> None:
    """Text on a filled rectangle with its top-left corner at xy."""
    w, h = text_size(draw, text, size)
    x, y = xy
    draw.rectangle((x, y, x + w + 2 * pad, y + h + 2 * pad + 2), fill=fill)
    draw.text((x + pad, y + pad), text, fill=color, font=font(size))


@lru_cache(maxsize=4)
def _lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def apply_colormap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, name: str = "viridis") -> np.ndarray:
    """(H, W) floats -> (H, W, 3) uint8 through a matplotlib colour map; NaN is black."""
    v = np.asarray(values, dtype=np.float32)
    scaled = np.clip((np.nan_to_num(v, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    out = _lut(name)[(scaled * 255 + 0.5).astype(np.uint8)]
    out[np.isnan(v)] = 0
    return out


def colorbar(width: int, height: int = 12, name: str = "viridis", left: str = "0", right: str = "1") -> np.ndarray:
    """A horizontal colour-bar strip with end labels: (height + 16, width, 3) uint8."""
    bar = apply_colormap(np.tile(np.linspace(0, 1, width), (height, 1)), name=name)
    canvas = Image.new("RGB", (width, height + 16), (255, 255, 255))
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, height + 1), left, fill=(0, 0, 0), font=font(12))
    w, _ = text_size(draw, right, 12)
    draw.text((width - w - 2, height + 1), right, fill=(0, 0, 0), font=font(12))
    return np.asarray(canvas)


@lru_cache(maxsize=256)
def _title_strip(title: str, width: int, size: int) -> np.ndarray:
    """A white (size + 8, width, 3) strip with `title` in black (kept: the app draws the same titles often)."""
    canvas = Image.new("RGB", (width, size + 8), (255, 255, 255))
    ImageDraw.Draw(canvas).text((4, 3), title, fill=(0, 0, 0), font=font(size))
    strip = np.asarray(canvas)
    strip.flags.writeable = False
    return strip


def titled(image: np.ndarray, title: str, size: int = 14) -> np.ndarray:
    """image (H, W, 3) uint8 with a white title strip above it: (H + size + 8, W, 3)."""
    return np.concatenate([_title_strip(title, image.shape[1], size), image[..., :3]], axis=0)


def grid(tiles: list[np.ndarray], columns: int, gap: int = 6, background=(255, 255, 255)) -> np.ndarray:
    """Tiles (any sizes) laid out row by row in `columns` columns."""
    rows = [tiles[i:i + columns] for i in range(0, len(tiles), columns)]
    col_w = [max(t.shape[1] for t in tiles[c::columns]) for c in range(min(columns, len(tiles)))]
    row_h = [max(t.shape[0] for t in row) for row in rows]
    canvas = Image.new("RGB", (sum(col_w) + gap * (len(col_w) - 1), sum(row_h) + gap * (len(rows) - 1)), background)
    y = 0
    for row, rh in zip(rows, row_h):
        x = 0
        for tile, cw in zip(row, col_w):
            canvas.paste(Image.fromarray(tile), (x, y))
            x += cw + gap
        y += rh + gap
    return np.asarray(canvas)


def resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """uint8 image to (width, height)."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize(tuple(size), resample))
