"""Geometry of the alignment probe: what each model reads to decide one pixel.

Pixel (x, y) of an (H, W) image has its centre at normalised (y, x) = (-1 + (2y + 1) / H, -1 + (2x + 1) / W),
the convention of ifa.models.ifa. Image-space boxes are in continuous pixel coordinates where pixel i
covers [i, i + 1): a level with an h_l x w_l grid splits the image into cells of H / h_l x W / w_l px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ifa.models.geometry import CENTRE_SHIFT, grid_reads, query_centres


@dataclass
class LevelRead:
    """The cell the IFA head reads at one pyramid level for a query point, and the offset to it."""

    level: int  # 1..L
    stride: int
    grid: tuple[int, int]  # (h_l, w_l)
    cell: tuple[int, int]  # (row, col)
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in image pixels: the queries that read the cell
    centre: tuple[float, float]  # (x, y) in image pixels: where the offset is measured from
    offset: tuple[float, float]  # r_l = (dy, dx) in cell units, each in [-1, 1] inside (the head's input)
    offset_px: tuple[float, float]  # (dx, dy) from that centre to the query point, in pixels


@dataclass
class FootprintCell:
    """One of the (up to four) stride-4 logit cells the baseline's bilinear upsampling mixes at a pixel."""

    cell: tuple[int, int]  # (row, col)
    weight: float
    box: tuple[float, float, float, float]
    centre: tuple[float, float]


def normalised_point(point: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    """Pixel (x, y) of a size-(H, W) image -> normalised (y, x) of its centre, -1 + (2i + 1) / n, as the IFA head's
    query grid holds it (`query_centres`, float32), so that a probe reads the cells a full-resolution query does."""
    (x, y), (h, w) = point, size
    return float(query_centres(h)[y]), float(query_centres(w)[x])


def _cell(i: int, n_query: int, n_level: int, read: str) -> tuple[int, float]:
    """Query i of an n_query grid: the level cell IFA reads there and the offset in cell units (`grid_reads`)."""
    k, r = grid_reads(n_query, n_level, read)
    return int(k[i]), float(r[i])


def ifa_reads(point: tuple[int, int], size: tuple[int, int], level_sizes: list[tuple[int, int]],
              strides: list[int] | None = None, read: str = "nearest") -> list[LevelRead]:
    """The cell read at each level for a query at pixel point (x, y) of an image of size (H, W), for the head's
    `read`: "nearest" (the paper: the cell containing the point), "centred" (the cell whose feature centre is
    nearest, centres CENTRE_SHIFT of a cell up-left; the box is the region of queries that read it) or "ensemble"
    (shown as the cell containing the point: the head mixes it with three neighbours by area)."""
    (x, y), (h, w) = point, size
    strides = strides or [4 * 2 ** i for i in range(len(level_sizes))]
    shift = CENTRE_SHIFT if read == "centred" else 0.0
    reads = []
    for index, ((h_l, w_l), stride) in enumerate(zip(level_sizes, strides)):
        ky, ry = _cell(y, h, h_l, read)
        kx, rx = _cell(x, w, w_l, read)
        ch, cw = h / h_l, w / w_l
        centre = ((kx + 0.5 - shift) * cw, (ky + 0.5 - shift) * ch)
        reads.append(LevelRead(
            level=index + 1, stride=stride, grid=(h_l, w_l), cell=(ky, kx),
            box=((kx - shift) * cw, (ky - shift) * ch, (kx + 1 - shift) * cw, (ky + 1 - shift) * ch), centre=centre,
            offset=(ry, rx), offset_px=(x + 0.5 - centre[0], y + 0.5 - centre[1])))
    return reads


def _source(i: int, n_out: int, n_in: int, align_corners: bool) -> tuple[int, int, float]:
    """PyTorch's bilinear source index for output i: (i0, i1, lambda)."""
    if align_corners:
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = i0 + 1 if i0 < n_in - 1 else i0
    lam = src - i0 if i1 != i0 else 0.0
    return i0, i1, lam


def bilinear_footprint(point: tuple[int, int], size: tuple[int, int], grid: tuple[int, int],
                       align_corners: bool = False) -> list[FootprintCell]:
    """The grid cells and weights bilinear upsampling from `grid` (h, w) to `size` (H, W) mixes at pixel (x, y).

    Duplicate cells (at the image border) are merged; weights sum to 1; the largest weight comes first.
    """
    (x, y), (h, w), (gh, gw) = point, size, grid
    y0, y1, ly = _source(y, h, gh, align_corners)
    x0, x1, lx = _source(x, w, gw, align_corners)
    weights: dict[tuple[int, int], float] = {}
    for (cy, wy) in ((y0, 1 - ly), (y1, ly)):
        for (cx, wx) in ((x0, 1 - lx), (x1, lx)):
            weights[(cy, cx)] = weights.get((cy, cx), 0.0) + wy * wx
    ch, cw = h / gh, w / gw
    cells = []
    for (cy, cx), weight in weights.items():
        if align_corners:
            centre = (cx * (w - 1) / max(gw - 1, 1) + 0.5, cy * (h - 1) / max(gh - 1, 1) + 0.5)
        else:
            centre = ((cx + 0.5) * cw, (cy + 0.5) * ch)
        box = (centre[0] - cw / 2, centre[1] - ch / 2, centre[0] + cw / 2, centre[1] + ch / 2)
        cells.append(FootprintCell((cy, cx), float(weight), box, centre))
    return sorted(cells, key=lambda c: -c.weight)


def mix_logits(grid_logits: np.ndarray, cells: list[FootprintCell]) -> np.ndarray:
    """The upsampled logits (K,) at the pixel: the footprint's weighted sum of grid logits (K, h, w)."""
    return sum(c.weight * grid_logits[:, c.cell[0], c.cell[1]] for c in cells)


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
