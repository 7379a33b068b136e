"""What the app shows, computed from a Result: overlays, differences, scores, feature panels, probes.

Pure functions of numpy arrays (no model, no Gradio), so scripts and tests can call them directly.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..compare import (
    AGREE,
    MODELS,
    UNKNOWN,
    VERDICTS,
    DifferenceRegion,
    boundary_bands,
    difference_regions,
    disagreement,
    pair_scores,
    verdict_map,
)
from ..viz import figure, overlay
from ..viz.boxes import draw_boxes, verdict_image
from ..viz.draw import LEVEL_COLORS
from ..viz.heatmaps import level_share_panel
from ..viz.pca import pca_rgb
from ..viz.probe import CellMark, crosshair, probe_panel
from .probe import bilinear_footprint, ifa_reads, mix_logits, normalised_point, softmax
from .results import Result

BASELINE_NAME, IFA_NAME = MODELS["baseline"], MODELS["ifa"]
REGION_HEADERS = ["#", "box (x0, y0, x1, y1)", "centre (x, y)", "pixels", "Semantic FPN → FPN + IFA",
                  "ground truth", "who is right", "IFA right (px)", "FPN right (px)"]
SCORE_HEADERS = ["class", "Semantic FPN IoU %", "FPN + IFA IoU %", "Δ (IFA − FPN)"]
PROBE_HEADERS = ["what", "grid (h × w)", "cell (row, col)", "cell centre (x, y) px", "offset r (dy, dx)",
                 "offset (dx, dy) px", "weight"]


# --- side by side ---------------------------------------------------------------------------------

def visible_mask(class_names: list[str], shown: list[str] | None) -> np.ndarray:
    """Boolean (K,) mask of the classes to colour; None = all."""
    if shown is None:
        return np.ones(len(class_names), dtype=bool)
    shown_set = set(shown)
    return np.array([name in shown_set for name in class_names], dtype=bool)


def overlays(result: Result, opacity: float, visible: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(ground-truth overlay or None, baseline overlay, IFA overlay), each drawn once; `boxed` adds the regions."""
    def make(labels):
        return overlay(result.image, labels, result.palette, alpha=opacity, visible=visible)
    return (make(result.gt) if result.gt is not None else None), make(result.baseline.labels), make(result.ifa.labels)


def boxed(image: np.ndarray, regions: list[DifferenceRegion]) -> np.ndarray:
    """A copy of an overlay with `regions` boxed in yellow (numbered as the region table)."""
    return draw_boxes(image, regions) if regions else image


def present_classes(result: Result) -> set[int]:
    maps = [result.baseline.labels, result.ifa.labels] + ([result.gt] if result.gt is not None else [])
    present = set()
    for m in maps:
        present.update(int(v) for v in np.unique(m) if v < result.num_classes)
    return present


def label_map_pngs(result: Result) -> dict[str, bytes]:
    """Both label maps as palette PNG bytes (pixel value = class index, colours = the pair's palette), by tag."""
    flat = [c for color in result.palette for c in color]
    flat += [0] * (768 - len(flat))
    out = {}
    for tag, output in (("semantic-fpn", result.baseline), ("fpn-ifa", result.ifa)):
        img = Image.fromarray(output.labels.astype(np.uint8), mode="P")
        img.putpalette(flat)
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", compress_level=1)  # label maps compress well at zlib level 1, 4x faster
        out[tag] = buffer.getvalue()
    return out


def write_label_maps(result: Result, folder: Path) -> list[str]:
    """Both label maps as palette PNGs (label_map_pngs) in `folder`: [Semantic FPN's, FPN + IFA's] paths."""
    stem = Path(result.name).stem or "image"
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:60]
    paths = []
    for tag, data in label_map_pngs(result).items():
        path = folder / f"{stem}_{tag}_labels.png"
        path.write_bytes(data)
        paths.append(str(path))
    return paths


# --- where they differ ------------------------------------------------------------------------------

@dataclass
class Comparison:
    regions: list[DifferenceRegion]  # all regions >= min_area, largest first
    verdicts: np.ndarray  # (H, W) uint8 ifa.compare verdict per pixel
    differing: int  # pixels where the two label maps disagree
    total: int


def compare(result: Result, min_area: int) -> Comparison:
    b, i = result.baseline.labels, result.ifa.labels
    regions = difference_regions(b, i, result.gt, min_area=min_area, ignore_index=255)
    if result.gt is not None:
        verdicts = verdict_map(b, i, result.gt)
    else:
        verdicts = np.where(disagreement(b, i), UNKNOWN, AGREE).astype(np.uint8)
    return Comparison(regions, verdicts, int((b != i).sum()), b.size)


def difference_view(result: Result, comparison: Comparison, top_k: int) -> np.ndarray:
    return verdict_image(result.image, comparison.verdicts, comparison.regions[:top_k])


def region_rows(result: Result, regions: list[DifferenceRegion]) -> list[list]:
    """One table row per region, numbered as the boxes are."""
    names = result.class_names
    rows = []
    for rank, r in enumerate(regions, start=1):
        top, left, bottom, right = r.box
        known = r.gt_class is not None
        rows.append([
            rank, f"({left}, {top}, {right}, {bottom})", f"({r.centroid[1]:.0f}, {r.centroid[0]:.0f})", r.area,
            f"{names[r.baseline_class]} → {names[r.ifa_class]}", names[r.gt_class] if known else "—",
            VERDICTS[r.verdict], r.ifa_right if known else None, r.baseline_right if known else None,
        ])
    return rows


# --- scores ---------------------------------------------------------------------------------------

def scores(result: Result) -> dict | None:
    """{"Semantic FPN": image_summary(...), "FPN + IFA": image_summary(...)} in percent (ifa.compare.pair_scores:
    both over the classes of the ground truth, false positives of other classes counted apart), or None without
    ground truth."""
    if result.gt is None:
        return None
    both = pair_scores(result.baseline.labels, result.ifa.labels, result.gt, result.class_names)
    return {MODELS[role]: summary for role, summary in both.items()}


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 2)


def score_rows(result: Result, summary: dict) -> list[list]:
    b, i = summary[BASELINE_NAME], summary[IFA_NAME]
    rows = []
    for label, key in (("mIoU (classes in the ground truth)", "mIoU"), ("pixel accuracy", "aAcc"),
                       ("mean class accuracy", "mAcc")):
        bv, iv = _num(b[key]), _num(i[key])
        rows.append([label, bv, iv, _num(iv - bv) if bv is not None and iv is not None else None])
    for name in result.class_names:
        bv, iv = _num(b["per_class"][name]), _num(i["per_class"][name])
        if bv is not None or iv is not None:  # classes of the ground truth only: the table holds IoUs
            rows.append([name, bv, iv, _num(iv - bv) if bv is not None and iv is not None else None])
    return rows


def false_positive_notes(summary: dict) -> list[str]:
    """One line per class absent from the ground truth that a model predicts: its pixel counts (reported beside the
    IoU table, never averaged in as an IoU of 0)."""
    b, i = summary[BASELINE_NAME]["false_positive_pixels"], summary[IFA_NAME]["false_positive_pixels"]
    return [f"{name} is not in the ground truth: predicted on {b.get(name, 0)} px by {BASELINE_NAME} and "
            f"{i.get(name, 0)} px by {IFA_NAME} (false positives; no IoU, not in the means)"
            for name in dict.fromkeys([*b, *i])]


def boundary_curves(result: Result) -> dict | None:
    """ifa.compare.boundary_bands of the image, the models named: {"widths", "Semantic FPN": {"accuracy", "mIoU",
    "pixels", "overall"}, "FPN + IFA": {...}} in percent, or None without ground truth."""
    if result.gt is None:
        return None
    bands = boundary_bands([(result.baseline.labels, result.ifa.labels, result.gt)], result.num_classes)
    return {"widths": bands["widths"], **{MODELS[role]: bands[role] for role in MODELS}}


def boundary_figure(curves: dict):
    return figure.boundary_figure(curves["widths"], {name: curves[name] for name in MODELS.values()},
                                  size=(8.0, 3.0), font_size=9.0, overall=True)


# --- feature alignment ----------------------------------------------------------------------------

def level_panels(result: Result) -> tuple[np.ndarray, np.ndarray]:
    """(IFA panel, baseline panel) of per-level contribution shares."""
    a = result.analysis
    h, w = result.size
    strides = [4 * 2 ** i for i in range(a.ifa_shares.shape[0])]
    ifa_titles = [f"IFA level {i + 1} (stride {s})" for i, s in enumerate(strides)]
    fpn_titles = [f"FPN branch {i + 1} (stride {s})" for i, s in enumerate(strides)]
    ih, iw = a.ifa_query_size
    ifa = a.ifa_shares[:, : _crop(ih, h, a.padded_size[0]), : _crop(iw, w, a.padded_size[1])]
    fh, fw = a.fpn_grid_size
    fpn = a.fpn_shares[:, : _crop(fh, h, a.padded_size[0]), : _crop(fw, w, a.padded_size[1])]
    return (level_share_panel(ifa, (w, h), ifa_titles, title="FPN + IFA: share of each level in the first MLP layer"),
            level_share_panel(fpn, (w, h), fpn_titles, title="Semantic FPN: share of each level's head branch"))


def _crop(n_grid: int, n_image: int, n_padded: int) -> int:
    """Grid rows covering the unpadded image (HRNet pads to a multiple of 32)."""
    return max(1, math.ceil(n_grid * n_image / n_padded))


def pca_images(result: Result) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    """(IFA PCA image, baseline PCA image, explained variance ratios) at the image size."""
    a = result.analysis
    h, w = result.size
    ih, iw = a.ifa_query_size
    fh, fw = a.fpn_grid_size
    ifa_feats = a.ifa_features[:, : _crop(ih, h, a.padded_size[0]), : _crop(iw, w, a.padded_size[1])]
    fpn_feats = a.fpn_features[:, : _crop(fh, h, a.padded_size[0]), : _crop(fw, w, a.padded_size[1])]
    ifa_rgb, ifa_var = pca_rgb(ifa_feats, (w, h))
    fpn_rgb, fpn_var = pca_rgb(fpn_feats, (w, h))
    return ifa_rgb, fpn_rgb, [float(v) for v in ifa_var], [float(v) for v in fpn_var]


@dataclass
class ProbeView:
    panel: np.ndarray
    marked: np.ndarray  # the image with a crosshair at the point
    baseline_probs: dict[str, float]  # as predicted (all scales / flips)
    ifa_probs: dict[str, float]
    ifa_point_probs: dict[str, float] | None  # IFA queried exactly at the point (scale 1)
    baseline_mix_probs: dict[str, float]  # the baseline's footprint mix (scale 1)
    rows: list[list]
    data: dict


def probe_geometry(result: Result, point: tuple[int, int]):
    a = result.analysis
    reads = ifa_reads(point, a.padded_size, a.ifa_level_sizes, read=a.ifa_read)
    footprint = bilinear_footprint(point, a.padded_size, a.fpn_grid_size, result.baseline_align_corners)
    return reads, footprint, normalised_point(point, a.padded_size)


def probe_view(result: Result, point: tuple[int, int], ifa_point: np.ndarray | None) -> ProbeView:
    """Everything shown for a click at pixel point (x, y); ifa_point: IFA probabilities (K,) queried there."""
    a = result.analysis
    names = result.class_names
    x, y = point
    reads, footprint, _ = probe_geometry(result, point)
    ifa_marks = [CellMark(f"level {r.level} (stride {r.stride}): cell {r.cell}, r = ({r.offset[0]:+.2f}, "
                          f"{r.offset[1]:+.2f})", LEVEL_COLORS[(r.level - 1) % len(LEVEL_COLORS)], r.box, r.centre)
                 for r in reads]
    grid_probs = softmax(a.fpn_grid_logits[:, [c.cell[0] for c in footprint], [c.cell[1] for c in footprint]])
    fp_marks = [CellMark(f"cell {c.cell}: weight {c.weight:.2f}, top {names[int(grid_probs[:, j].argmax())]} "
                         f"{grid_probs[:, j].max():.2f}", (255, 255, 255) if j else (255, 221, 0), c.box, c.centre,
                         weight=c.weight) for j, c in enumerate(footprint)]
    panel = probe_panel(result.image, point, ifa_marks, fp_marks)
    mix = softmax(mix_logits(a.fpn_grid_logits, footprint))

    def as_dict(p) -> dict[str, float]:
        return {n: float(v) for n, v in zip(names, p)}

    rows = [[f"IFA level {r.level} (stride {r.stride})", f"{r.grid[0]} × {r.grid[1]}", f"{r.cell}",
             f"({r.centre[0]:.1f}, {r.centre[1]:.1f})", f"({r.offset[0]:+.3f}, {r.offset[1]:+.3f})",
             f"({r.offset_px[0]:+.1f}, {r.offset_px[1]:+.1f})", None] for r in reads]
    rows += [["FPN upsampling footprint", f"{a.fpn_grid_size[0]} × {a.fpn_grid_size[1]}", f"{c.cell}",
              f"({c.centre[0]:.1f}, {c.centre[1]:.1f})", "", "", round(c.weight, 4)] for c in footprint]
    data = {
        "point": {"x": x, "y": y},
        "ifa_read": a.ifa_read,
        "ifa_cells": [{"level": r.level, "stride": r.stride, "grid": list(r.grid), "cell": list(r.cell),
                       "centre_xy": list(r.centre), "offset_yx": list(r.offset), "offset_px_xy": list(r.offset_px)}
                      for r in reads],
        "baseline_footprint": [{"cell": list(c.cell), "weight": c.weight, "centre_xy": list(c.centre)}
                               for c in footprint],
    }
    probs_b, probs_i = result.baseline.probs_at(y, x), result.ifa.probs_at(y, x)
    return ProbeView(panel, crosshair(result.image, point), as_dict(probs_b), as_dict(probs_i),
                     as_dict(ifa_point) if ifa_point is not None else None, as_dict(mix), rows, data)


def offsets_explained(recorded: dict[str, float] | None) -> str:
    """Markdown: how much the loaded IFA model's offsets matter on its val set (from its model card), and where to
    see it on this image (the offset ablation below)."""
    lines = ["**Do this model's offsets matter?** Feeding every level's offset r to its position encoding as 0 "
             "switches the implicit alignment off (each coarse level then acts as nearest-cell upsampling)."]
    if recorded:
        drop = recorded["offsets_zeroed"] - recorded["as_trained"]
        lines.append(f"On its validation set (model card): mIoU {recorded['as_trained']:.2f} as trained, "
                     f"{recorded['offsets_zeroed']:.2f} with offsets zeroed ({drop:+.2f}); "
                     f"{recorded['changed_percent']:.2f}% of the labels change.")
    else:
        lines.append("Its model card records no offset ablation (`python -m tools.offset_ablation MODEL`).")
    lines.append("On this image: **Zero the IFA offsets on this image** below shows which labels change.")
    return " ".join(lines)
