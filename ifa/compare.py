"""Two predictions side by side: where they differ, grouped into regions, who is right, and both models' scores.

Label maps are (H, W) integer arrays of class indices; ground truth uses 255 for ignored pixels. One stack for
the app and ifa.figures: `pair_scores` (per-image scores over one class set), `boundary_bands` (accuracy and
mIoU near ground-truth boundaries), `difference_regions` (the boxes), with the models named by MODELS.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .metrics import (
    DEFAULT_TRIMAP_WIDTHS,
    band_scores,
    boundary_distance_bands,
    confusion_matrix,
    image_summary,
)

# The two roles of a pair and how every view names them.
MODELS = {"baseline": "Semantic FPN", "ifa": "FPN + IFA"}

AGREE, IFA_FIXED, IFA_BROKE, BOTH_WRONG, UNKNOWN = 0, 1, 2, 3, 4
VERDICTS = {IFA_FIXED: "IFA fixed it", IFA_BROKE: "IFA broke it", BOTH_WRONG: "both wrong", UNKNOWN: "no ground truth"}


@dataclass
class DifferenceRegion:
    """A connected group of pixels where the two predictions disagree.

    box is (top, left, bottom, right) with bottom/right exclusive; classes are the majority
    class of each map inside the region; verdict is a key of VERDICTS.
    """

    box: tuple[int, int, int, int]
    area: int
    centroid: tuple[float, float]  # (y, x)
    baseline_class: int
    ifa_class: int
    gt_class: int | None
    verdict: int
    ifa_right: int  # pixels where IFA matches the ground truth
    baseline_right: int  # pixels where the baseline matches the ground truth

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict_name"] = VERDICTS[self.verdict]
        return data


def disagreement(baseline: np.ndarray, ifa: np.ndarray) -> np.ndarray:
    """Boolean (H, W): pixels where the two label maps differ."""
    if baseline.shape != ifa.shape:
        raise ValueError(f"label maps differ in size: {baseline.shape} vs {ifa.shape}")
    return baseline != ifa


def verdict_map(baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """Per pixel: AGREE, IFA_FIXED (only IFA right), IFA_BROKE (only the baseline right),
    BOTH_WRONG, or UNKNOWN (ignored ground truth where they disagree). uint8 (H, W)."""
    out = np.full(baseline.shape, AGREE, dtype=np.uint8)
    differ = disagreement(baseline, ifa)
    known = gt != ignore_index
    out[differ & known & (ifa == gt)] = IFA_FIXED
    out[differ & known & (baseline == gt)] = IFA_BROKE
    out[differ & known & (ifa != gt) & (baseline != gt)] = BOTH_WRONG
    out[differ & ~known] = UNKNOWN
    return out


def _majority(values: np.ndarray) -> int:
    return int(np.bincount(values.astype(np.int64)).argmax())


def difference_regions(baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray | None = None, min_area: int = 16,
                       top_k: int | None = None, ignore_index: int = 255) -> list[DifferenceRegion]:
    """Connected components (8-connected) of the disagreement, at least `min_area` pixels, largest first.

    With ground truth, each region's verdict is whichever of IFA_FIXED / IFA_BROKE / BOTH_WRONG
    holds for most of its labelled pixels; regions with no labelled pixel are UNKNOWN.
    """
    differ = disagreement(baseline, ifa)
    components, count = ndimage.label(differ, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    slices = ndimage.find_objects(components)
    regions = []
    for index, sl in enumerate(slices, start=1):
        inside = components[sl] == index
        area = int(inside.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(inside)
        base_vals, ifa_vals = baseline[sl][inside], ifa[sl][inside]
        gt_class, verdict, ifa_right, base_right = None, UNKNOWN, 0, 0
        if gt is not None:
            gt_vals = gt[sl][inside]
            known = gt_vals != ignore_index
            if known.any():
                gt_known = gt_vals[known]
                gt_class = _majority(gt_known)
                ifa_right = int((ifa_vals[known] == gt_known).sum())
                base_right = int((base_vals[known] == gt_known).sum())
                neither = int(known.sum()) - ifa_right - base_right
                verdict = (IFA_FIXED, IFA_BROKE, BOTH_WRONG)[int(np.argmax([ifa_right, base_right, neither]))]
        regions.append(DifferenceRegion(
            box=(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), area=area,
            centroid=(float(ys.mean() + sl[0].start), float(xs.mean() + sl[1].start)),
            baseline_class=_majority(base_vals), ifa_class=_majority(ifa_vals), gt_class=gt_class,
            verdict=verdict, ifa_right=ifa_right, baseline_right=base_right))
    regions.sort(key=lambda r: -r.area)
    return regions[:top_k] if top_k is not None else regions


def pair_scores(baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray, class_names: Sequence[str],
                ignore_index: int = 255) -> dict[str, dict]:
    """{"baseline": ..., "ifa": ...} ifa.metrics.image_summary of each model (percent), both over the classes of
    the ground truth (one class set for both; false positives of other classes counted apart)."""
    return {role: image_summary(pred, gt, class_names, ignore_index)
            for role, pred in (("baseline", baseline), ("ifa", ifa))}


def boundary_bands(samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int,
                   widths: Sequence[float] = DEFAULT_TRIMAP_WIDTHS, ignore_index: int = 255) -> dict:
    """Pixel accuracy and mIoU of both models within each band around the ground-truth boundaries.

    samples: (baseline, ifa, gt) label maps of each image (one image for the app, a set for ifa.figures). A band
    of width w holds the pixels whose distance to the nearest boundary is below w
    (ifa.metrics.boundary_distance_bands, one distance transform per image); confusion matrices are summed over
    the images before scoring, and read by ifa.metrics.band_scores (mIoU over the ground truth's classes, the
    convention of `pair_scores`: for one image "overall" equals its table's mIoU). Returns, in percent,
    {"widths", "images", "baseline": {"accuracy": [...], "mIoU": [...], "pixels": [...], "overall": {"accuracy",
    "mIoU"}}, "ifa": {...}}; None where a band holds no pixel.
    """
    widths, k = list(widths), num_classes
    cms = {role: {w: np.zeros((k, k), np.int64) for w in widths} for role in MODELS}
    overall = {role: np.zeros((k, k), np.int64) for role in MODELS}
    count = 0
    for baseline, ifa, gt in samples:
        count += 1
        bands = boundary_distance_bands(gt, ignore_index, widths)
        for role, pred in (("baseline", baseline), ("ifa", ifa)):
            overall[role] += confusion_matrix(pred, gt, k, ignore_index)
            for w, mask in bands.items():
                cms[role][w] += confusion_matrix(pred[mask], gt[mask], k, ignore_index)
    result = {"widths": widths, "images": count}
    for role in MODELS:
        scores = [band_scores(cms[role][w]) for w in widths]
        whole = band_scores(overall[role])
        result[role] = {key: [s[key] for s in scores] for key in ("accuracy", "mIoU", "pixels")}
        result[role]["overall"] = {"accuracy": whole["accuracy"], "mIoU": whole["mIoU"]}
    return result
