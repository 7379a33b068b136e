"""The alignment probe: what each model reads at one pixel, drawn on a zoomed crop of the image.

Left panel (FPN + IFA): for each pyramid level, the cell whose feature the IFA head reads (nearest
cell) and the offset from that cell's centre to the query point, in one colour per level.
Right panel (Semantic FPN): the four stride-4 cells whose logits the final bilinear upsampling mixes
at that point, with their weights.
Boxes and centres are in image pixel coordinates (x, y), floats; boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .draw import YELLOW, font, label_box, text_size


@dataclass
class CellMark:
    label: str
    color: tuple[int, int, int]
    box: tuple[float, float, float, float]
    centre: tuple[float, float]
    weight: float | None = None


def crosshair(image: np.ndarray, point: tuple[float, float], color=YELLOW) -> np.ndarray:
    """The image with a crosshair + circle at point (x, y)."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    x, y = point
    r = max(6, round(max(image.shape[:2]) / 60))
    for width, col in ((4, (0, 0, 0)), (2, color)):
        draw.ellipse((x - r, y - r, x + r, y + r), outline=col, width=width)
        draw.line((x - 2 * r, y, x - r // 2, y), fill=col, width=width)
        draw.line((x + r // 2, y, x + 2 * r, y), fill=col, width=width)
        draw.line((x, y - 2 * r, x, y - r // 2), fill=col, width=width)
        draw.line((x, y + r // 2, x, y + 2 * r), fill=col, width=width)
    return np.asarray(canvas)


def _window(marks: list[CellMark], point, shape, margin: float = 6.0, min_half: float = 20.0):
    x, y = point
    half = min_half
    for m in marks:
        x0, y0, x1, y1 = m.box
        half = max(half, abs(x0 - x), abs(x1 - x), abs(y0 - y), abs(y1 - y))
    half += margin
    left, top = int(np.floor(x - half)), int(np.floor(y - half))
    size = int(np.ceil(2 * half)) + 1
    return left, top, size


def _crop(image: np.ndarray, left: int, top: int, size: int) -> np.ndarray:
    """A size x size crop (padded with grey outside the image)."""
    h, w = image.shape[:2]
    out = np.full((size, size, 3), 96, dtype=np.uint8)
    sy0, sx0 = max(0, top), max(0, left)
    sy1, sx1 = min(h, top + size), min(w, left + size)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    return out


def _panel(image, marks: list[CellMark], point, window, panel_px: int, title: str, fill_alpha: int) -> Image.Image:
    left, top, size = window
    zoom = panel_px / size
    crop = Image.fromarray(_crop(image, left, top, size)).resize((panel_px, panel_px), Image.Resampling.NEAREST)
    crop = Image.blend(crop, Image.new("RGB", crop.size, (255, 255, 255)), 0.25)

    def to_panel(px: float, py: float) -> tuple[float, float]:
        # image pixel coordinates -> panel coordinates (pixel i covers [i, i + 1) in the image)
        return (px - left) * zoom, (py - top) * zoom

    layer = Image.new("RGBA", crop.size, (0, 0, 0, 0))
    ldraw = ImageDraw.Draw(layer)
    for m in sorted(marks, key=lambda m: -(m.box[2] - m.box[0])):  # largest first, so small ones stay on top
        x0, y0 = to_panel(m.box[0], m.box[1])
        x1, y1 = to_panel(m.box[2], m.box[3])
        alpha = fill_alpha if m.weight is None else int(40 + 160 * m.weight)
        ldraw.rectangle((x0, y0, x1, y1), fill=(*m.color, alpha))
    crop = Image.alpha_composite(crop.convert("RGBA"), layer).convert("RGB")
    draw = ImageDraw.Draw(crop)
    px, py = to_panel(point[0] + 0.5, point[1] + 0.5)
    for m in sorted(marks, key=lambda m: -(m.box[2] - m.box[0])):
        x0, y0 = to_panel(m.box[0], m.box[1])
        x1, y1 = to_panel(m.box[2], m.box[3])
        draw.rectangle((x0, y0, x1, y1), outline=m.color, width=3)
        cx, cy = to_panel(*m.centre)
        width = 3 if m.weight is None else max(1, round(1 + 6 * m.weight))
        draw.line((cx, cy, px, py), fill=(0, 0, 0), width=width + 2)
        draw.line((cx, cy, px, py), fill=m.color, width=width)
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=m.color, outline=(0, 0, 0))
        if m.weight is not None:
            text = f"{m.weight:.2f}"
            tw, th = text_size(draw, text, 13)
            label_box(draw, (cx - tw / 2 - 2, cy + 7), text, fill=(255, 255, 255), color=(0, 0, 0))
    r = 6
    draw.ellipse((px - r, py - r, px + r, py + r), fill=YELLOW, outline=(0, 0, 0), width=2)
    header = Image.new("RGB", (panel_px, 22), (255, 255, 255))
    ImageDraw.Draw(header).text((4, 3), title, fill=(0, 0, 0), font=font(14))
    out = Image.new("RGB", (panel_px, panel_px + 22), (255, 255, 255))
    out.paste(header, (0, 0))
    out.paste(crop, (0, 22))
    return out


def _key(marks: list[CellMark], width: int) -> Image.Image:
    rows = max(1, len(marks))
    key = Image.new("RGB", (width, 8 + 20 * rows), (255, 255, 255))
    draw = ImageDraw.Draw(key)
    for i, m in enumerate(marks):
        y = 4 + 20 * i
        draw.rectangle((6, y + 2, 22, y + 16), fill=m.color, outline=(0, 0, 0))
        draw.text((28, y + 1), m.label, fill=(0, 0, 0), font=font(13))
    return key


def probe_panel(image: np.ndarray, point: tuple[int, int], ifa_cells: list[CellMark], footprint: list[CellMark],
                panel_px: int = 360) -> np.ndarray:
    """Two zoomed panels around `point` (x, y): IFA's per-level cells | the baseline's bilinear footprint."""
    centre = (point[0] + 0.5, point[1] + 0.5)
    ifa_window = _window(ifa_cells, centre, image.shape)
    fpn_window = _window(footprint, centre, image.shape, margin=3.0, min_half=8.0)
    left = _panel(image, ifa_cells, point, ifa_window, panel_px,
                  f"FPN + IFA: cell read at each level (zoom x{panel_px / ifa_window[2]:.1f})", 70)
    right = _panel(image, footprint, point, fpn_window, panel_px,
                   f"Semantic FPN: bilinear footprint (zoom x{panel_px / fpn_window[2]:.1f})", 0)
    keys = [_key(ifa_cells, panel_px), _key(footprint, panel_px)]
    key_h = max(k.height for k in keys)
    gap = 10
    out = Image.new("RGB", (2 * panel_px + gap, panel_px + 22 + key_h), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (panel_px + gap, 0))
    out.paste(keys[0], (0, panel_px + 22))
    out.paste(keys[1], (panel_px + gap, panel_px + 22))
    return np.asarray(out)
