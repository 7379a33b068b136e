"""Publication figures with matplotlib (no pyplot, so safe in a server): arrays in, Figures and bytes out.

- :func:`grid_figure`: one row per image, columns input | FPN baseline | FPN + IFA | ground truth,
  yellow boxes on given regions, optional zoomed insets of each row's first box (square panels),
  column titles, row labels and a legend of the classes shown. Every main panel has the same size; the figure's size
  in inches is fixed by the layout (no tight bounding box), so a PNG's pixel size is known
  beforehand (:func:`pixel_size`).
- :func:`boundary_figure`: accuracy and mIoU versus distance to the ground-truth boundaries.
- :func:`figure_bytes`: PDF (vector, raster panels embedded at ``dpi``), PNG (``dpi``) or SVG,
  with the metadata that would change from run to run left out: the same inputs give the same bytes.

Boxes are (top, left, bottom, right) pixel rows/columns with bottom/right exclusive, as in
:class:`ifa.compare.DifferenceRegion`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..compare import MODELS
from .colors import colorize

BOX_COLOR = "#ffff00"
FORMATS = ("pdf", "png", "svg")
MAIN_TITLES = ("Input", MODELS["baseline"], MODELS["ifa"], "Ground truth")
INSET_TITLES = (f"{MODELS['baseline']} (zoom)", f"{MODELS['ifa']} (zoom)", "Ground truth (zoom)")
# Fixed style, so that a user's matplotlibrc does not change the output.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 7.0,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "pdf.fonttype": 42,
    "pdf.compression": 6,
    "svg.fonttype": "path",
    "svg.hashsalt": "ifa-figures",
    "image.resample": True,
    "savefig.facecolor": "white",
    "savefig.transparent": False,
}
_METADATA = {"pdf": {"Creator": None, "Producer": None, "CreationDate": None},
             "png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


@dataclass
class PanelRow:
    """One figure row: the image, both predictions, the ground truth (or None) and the boxes to draw."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    baseline: np.ndarray  # (H, W) class indices
    ifa: np.ndarray  # (H, W) class indices
    gt: np.ndarray | None = None  # (H, W) class indices, 255 = ignored
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    label: str = ""  # a second line under the name, e.g. the scores


def square_box(box: Sequence[int], shape: Sequence[int], pad: int = 4, min_side: int = 16) -> tuple[int, int, int, int]:
    """The square around `box` (top, left, bottom, right; exclusive), `pad` pixels wider on each side and at
    least `min_side`, moved inside an image of `shape` (H, W, ...); it always contains `box`."""
    top, left, bottom, right = (int(v) for v in box)
    height, width = int(shape[0]), int(shape[1])
    side = max(bottom - top, right - left, 0) + 2 * pad
    side = max(side, min_side)
    out = []
    for start, stop, limit in ((top, bottom, height), (left, right, width)):
        span = min(side, limit)
        begin = math.floor(start + ((stop - start) - span) / 2)
        begin = min(max(begin, 0), limit - span)
        out.append((begin, begin + span))
    (t, b), (lft, r) = out
    return t, lft, b, r


def columns(has_gt: bool, insets: bool) -> list[str]:
    """The column titles of a grid with / without a ground-truth column and zoomed insets."""
    main = list(MAIN_TITLES if has_gt else MAIN_TITLES[:3])
    return main + (list(INSET_TITLES if has_gt else INSET_TITLES[:2]) if insets else [])


def _legend_classes(rows: Sequence[PanelRow], num_classes: int) -> list[int]:
    present = np.zeros(num_classes, dtype=bool)
    for row in rows:
        for labels in (row.baseline, row.ifa, row.gt):
            if labels is not None:
                values = np.unique(labels)
                present[values[(values >= 0) & (values < num_classes)]] = True
    return [int(k) for k in np.nonzero(present)[0]]


def _ceil(inches: float) -> float:
    """Round a size up to 1/100 inch, so that sizes at 100, 200, 300 ... dpi are whole pixels."""
    return math.ceil(round(inches * 100, 6)) / 100


def grid_figure(rows: Sequence[PanelRow], palette, class_names: Sequence[str] | None = None, *,
                column_titles: bool = True, legend: bool = True, row_labels: bool = True, insets: bool = False,
                panel_width: float = 1.8, box_width: float = 1.0, font_size: float = 7.0) -> Figure:
    """The comparison grid (see the module docstring). palette: (K, 3) RGB; sizes in inches / points."""
    if not rows:
        raise ValueError("a figure needs at least one row")
    if panel_width <= 0:
        raise ValueError(f"panel_width must be positive, got {panel_width}")
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    num_classes = len(palette)
    has_gt = any(row.gt is not None for row in rows)
    titles = columns(has_gt, insets)
    ncols, nrows = len(titles), len(rows)
    aspect = max(row.image.shape[0] / row.image.shape[1] for row in rows)
    pw, ph = panel_width, panel_width * aspect
    pt = 1 / 72
    pad, gap = 0.04, 0.03
    label_w = 2.9 * font_size * pt if row_labels else 0.0
    title_h = 1.9 * font_size * pt if column_titles else 0.0
    n_main = len(columns(has_gt, False))
    widths = [pw] * n_main + [ph] * (ncols - n_main)  # zoomed insets are squares
    lefts = [pad + label_w + sum(widths[:c]) + c * gap for c in range(ncols)]
    width = _ceil(lefts[-1] + widths[-1] + pad)
    shown = _legend_classes(rows, num_classes) if legend else []
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(num_classes)]
    legend_cols = legend_rows = 0
    if shown:
        item_w = (max(len(names[k]) for k in shown) * 0.6 * font_size + 2.6 * font_size) * pt
        legend_cols = max(1, min(len(shown), int((width - 2 * pad) // item_w)))
        legend_rows = math.ceil(len(shown) / legend_cols)
    legend_h = (legend_rows * 1.45 * font_size * pt + 0.06) if shown else 0.0
    height = _ceil(2 * pad + title_h + nrows * ph + (nrows - 1) * gap + legend_h)

    with matplotlib.rc_context({**STYLE, "font.size": font_size}):
        fig = Figure(figsize=(width, height))
        for c, title in enumerate(titles):
            if column_titles:
                fig.text((lefts[c] + widths[c] / 2) / width, (height - pad - title_h / 2) / height, title,
                         ha="center", va="center", fontsize=font_size)
        for r, row in enumerate(rows):
            bottom = height - pad - title_h - r * (ph + gap) - ph
            if row_labels:
                text = row.name + (f"\n{row.label}" if row.label else "")
                fig.text((pad + label_w / 2) / width, (bottom + ph / 2) / height, text, rotation=90,
                         ha="center", va="center", fontsize=font_size * 0.85, linespacing=1.2)
            panels = _row_panels(row, palette, has_gt)
            zoom = row.boxes[0] if row.boxes else None
            for c in range(ncols):
                ax = fig.add_axes((lefts[c] / width, bottom / height, widths[c] / width, ph / height))
                ax.set_xticks([])
                ax.set_yticks([])
                if c < len(panels):
                    _draw_panel(ax, *panels[c], row.boxes, box_width)
                else:
                    _draw_inset(ax, panels[c - len(panels) + 1], zoom, box_width)
        if shown:
            handles = [Patch(facecolor=palette[k] / 255.0, edgecolor="#555555", linewidth=0.3, label=names[k])
                       for k in shown]
            fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, pad / height), ncol=legend_cols,
                       frameon=False, fontsize=font_size, handlelength=1.2, handleheight=1.0, handletextpad=0.4,
                       columnspacing=1.0, borderaxespad=0.0, borderpad=0.0, labelspacing=0.3)
    return fig


def _row_panels(row: PanelRow, palette: np.ndarray, has_gt: bool) -> list[tuple[np.ndarray | None, str]]:
    """(RGB array or None, interpolation) for each main column."""
    panels = [(row.image, "antialiased"), (colorize(row.baseline, palette), "nearest"),
              (colorize(row.ifa, palette), "nearest")]
    if has_gt:
        panels.append((colorize(row.gt, palette) if row.gt is not None else None, "nearest"))
    return panels


def _draw_panel(ax, array: np.ndarray | None, interpolation: str, boxes, box_width: float) -> None:
    for spine in ax.spines.values():
        spine.set_visible(False)
    if array is None:
        ax.text(0.5, 0.5, "no label", ha="center", va="center", transform=ax.transAxes, color="#777777")
        return
    ax.imshow(array, interpolation=interpolation, aspect="equal")
    for top, left, bottom, right in boxes:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                               edgecolor=BOX_COLOR, linewidth=box_width))


def _draw_inset(ax, panel, box, box_width: float) -> None:
    """The first box of the row, enlarged, framed in the box colour; empty when there is none."""
    if panel is None or panel[0] is None or box is None:
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.text(0.5, 0.5, "no difference" if box is None else "no label", ha="center", va="center",
                transform=ax.transAxes, color="#777777")
        return
    top, left, bottom, right = box
    ax.imshow(panel[0][top:bottom, left:right], interpolation="nearest", aspect="equal")
    for spine in ax.spines.values():
        spine.set_edgecolor(BOX_COLOR)
        spine.set_linewidth(box_width * 1.5)


def boundary_figure(widths: Sequence[float], curves: dict[str, dict], *, size: tuple[float, float] = (6.0, 2.3),
                    font_size: float = 7.0, overall: bool = False) -> Figure:
    """Pixel accuracy and mIoU (percent) within each boundary band, one line per model.

    curves: {model label: {"accuracy": [...], "mIoU": [...], "overall": {"accuracy", "mIoU"}}} aligned with widths
    (pixels), as ifa.compare.boundary_bands gives them per model; `overall` adds each model's whole-image score as
    a dashed line.
    """
    styles = [{"color": "#7f7f7f", "linestyle": "--", "marker": "o"}, {"color": "#d62728", "marker": "s"},
              {"color": "#1f77b4", "marker": "^"}, {"color": "#2ca02c", "marker": "v"}]
    with matplotlib.rc_context({**STYLE, "font.size": font_size}):
        fig = Figure(figsize=size)
        axes = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.08, right=0.99, bottom=0.19, top=0.9, wspace=0.25)
        for ax, key, title in zip(axes, ("accuracy", "mIoU"), ("Pixel accuracy (%)", "mIoU (%)")):
            for (label, curve), style in zip(curves.items(), styles * len(curves)):
                values = [np.nan if v is None else v for v in curve[key]]
                ax.plot(list(widths), values, label=label, markersize=3, linewidth=1.0, **style)
                whole = curve.get("overall", {}).get(key) if overall else None
                if whole is not None:
                    ax.axhline(whole, color=style["color"], linestyle=":", linewidth=0.8, alpha=0.8)
            ax.set_title(title + (" (dotted: whole image)" if overall else ""), fontsize=font_size)
            ax.set_xlabel("band width around ground-truth boundaries (px)", fontsize=font_size)
            ax.grid(True, linewidth=0.3, color="#cccccc")
            ax.tick_params(labelsize=font_size * 0.9, width=0.5, length=2)
        axes[0].legend(frameon=False, fontsize=font_size, loc="lower right")
    return fig


def pixel_size(fig: Figure, dpi: float) -> tuple[int, int]:
    """(width, height) in pixels of `fig` saved as PNG at `dpi`."""
    w, h = fig.get_size_inches()
    return int(round(w * dpi)), int(round(h * dpi))


def figure_bytes(fig: Figure, fmt: str, dpi: float = 300) -> bytes:
    """The figure as PDF, PNG or SVG bytes; the same figure gives the same bytes."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; valid: {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
    return buffer.getvalue()
