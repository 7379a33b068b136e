"""Segmentation metrics: confusion matrix, IoU, accuracy and boundary-band (trimap) scores.

Conventions used throughout:

- Label maps hold class indices in ``[0, K)``; ``ignore_index`` (255 by default) marks pixels
  that are not scored. Predictions are label maps too (argmax already taken), never logits.
- A confusion matrix ``cm`` is a (K, K) int64 array with **rows = ground truth, columns =
  prediction**: ``cm[i, j]`` counts pixels of true class i predicted as class j. Matrices of
  several images add up, so a whole dataset is scored by summing per-image matrices.
- The array-returning functions (:func:`iou_per_class`, :func:`mean_iou`, ...) return
  **fractions** in [0, 1], with NaN where a value is undefined (a class absent from both the
  ground truth and the prediction; no scored pixel at all). The report-style dicts of
  :func:`summarize` and :func:`trimap_accuracy` are in **percent**.

No I/O happens here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

# Band widths (px) of the boundary analysis in the app and ifa.figures.
DEFAULT_TRIMAP_WIDTHS = (1, 2, 4, 8, 12, 16, 20, 24, 32, 40)

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def confusion_matrix(
    pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """Count (ground truth, prediction) pairs over the scored pixels.

    Args:
        pred: predicted class indices, numpy array or torch tensor of any shape.
        target: ground-truth class indices, same shape as ``pred``.
        num_classes: K.
        ignore_index: target value of pixels to skip. Pixels whose target lies outside
            [0, K) are skipped as well.

    Returns:
        (K, K) int64 array, rows = ground truth, columns = prediction.

    Raises:
        ValueError: shapes differ, K < 1, or a scored pixel's prediction lies outside [0, K).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    k = num_classes
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor):
        # Stay on the tensors' device: only the K*K counts travel back.
        t = target.reshape(-1).long()
        p = pred.reshape(-1).to(t.device).long()
        keep = (t != ignore_index) & (t >= 0) & (t < k)
        t, p = t[keep], p[keep]
        if p.numel() and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"predictions must lie in [0, {k}) on scored pixels")
        counts = torch.bincount(t * k + p, minlength=k * k)
        return counts.cpu().numpy().astype(np.int64).reshape(k, k)
    t = _as_numpy(target).reshape(-1).astype(np.int64)
    p = _as_numpy(pred).reshape(-1).astype(np.int64)
    keep = (t != ignore_index) & (t >= 0) & (t < k)
    t, p = t[keep], p[keep]
    if p.size and (p.min() < 0 or p.max() >= k):
        raise ValueError(f"predictions must lie in [0, {k}) on scored pixels")
    return np.bincount(t * k + p, minlength=k * k).astype(np.int64).reshape(k, k)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union of each class, TP / (TP + FP + FN), as a (K,) float fraction.

    NaN for classes absent from both ground truth and prediction (union 0).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=1) + cm.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean of :func:`iou_per_class` over the defined classes (NaN ignored); fraction in [0, 1]."""
    return _nanmean(iou_per_class(cm))


def class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Per-class pixel accuracy (recall), TP / ground-truth count, as a (K,) float fraction.

    NaN for classes absent from the ground truth.
    """
    cm = np.asarray(cm, dtype=np.float64)
    gt = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gt > 0, np.diag(cm) / gt, np.nan)


def mean_accuracy(cm: np.ndarray) -> float:
    """Mean of :func:`class_accuracy` over classes present in the ground truth; fraction."""
    return _nanmean(class_accuracy(cm))


def overall_accuracy(cm: np.ndarray) -> float:
    """Fraction of scored pixels predicted correctly (trace / total); NaN if nothing was scored."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def summarize(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Report a confusion matrix in percent.

    Returns:
        ``{"mIoU": float, "mAcc": float, "aAcc": float, "per_class": {name: IoU or None}}``,
        every number in percent (0..100); a class's IoU is None where it is undefined (class
        absent from both ground truth and prediction). The three means are NaN only if no pixel
        was scored.
    """
    cm = np.asarray(cm)
    if cm.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {len(class_names)} class names")
    ious = iou_per_class(cm)
    return {
        "mIoU": 100.0 * mean_iou(cm),
        "mAcc": 100.0 * mean_accuracy(cm),
        "aAcc": 100.0 * overall_accuracy(cm),
        "per_class": {
            name: None if np.isnan(iou) else 100.0 * float(iou) for name, iou in zip(class_names, ious)
        },
    }


def ground_truth_iou(cm: np.ndarray) -> np.ndarray:
    """:func:`iou_per_class` for the classes present in the ground truth (rows with pixels), NaN for the others.

    The project's convention for scoring one image or one boundary band: a class the ground truth does not
    contain has no IoU, so false positives of such a class do not enter a mean as an IoU of 0 (they still lower
    the IoU of the classes whose pixels they took; :func:`false_positive_pixels` counts them apart).
    """
    cm = np.asarray(cm)
    return np.where(cm.sum(axis=1) > 0, iou_per_class(cm), np.nan)


def false_positive_pixels(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """{name: pixels}: the classes absent from the ground truth that the prediction uses on scored pixels."""
    cm = np.asarray(cm)
    present = cm.sum(axis=1) > 0
    return {class_names[c]: int(cm[:, c].sum()) for c in range(len(class_names)) if not present[c] and cm[:, c].sum()}


def band_scores(cm: np.ndarray) -> dict:
    """{"accuracy", "mIoU", "pixels"} of a confusion matrix: percent (None when nothing is scored), mIoU over the
    ground truth's classes (:func:`ground_truth_iou`). The one reading of a per-image or per-band matrix that the
    app's table, its boundary plot, the summary JSON, the dataset view, ifa.figures and the MCP tool share."""
    pixels = int(np.asarray(cm).sum())
    if not pixels:
        return {"accuracy": None, "mIoU": None, "pixels": 0}
    return {"accuracy": 100.0 * overall_accuracy(cm), "mIoU": 100.0 * _nanmean(ground_truth_iou(cm)), "pixels": pixels}


def image_summary(pred: ArrayLike, target: ArrayLike, class_names: Sequence[str], ignore_index: int = 255) -> dict:
    """Scores of one prediction on one image, in percent, over the classes present in its ground truth.

    The usual convention for a single image, and one class set for every model scored on it
    (:func:`ground_truth_iou`; false positives of other classes reported apart).

    Returns:
        ``{"mIoU", "mAcc", "aAcc", "per_class": {name: IoU or None}, "false_positive_pixels": {name: count}}``:
        means over the ground truth's classes (NaN when no pixel is scored); false_positive_pixels lists
        the classes absent from the ground truth that the model predicts on scored pixels, with pixel counts.
    """
    cm = confusion_matrix(pred, target, len(class_names), ignore_index)
    ious = ground_truth_iou(cm)
    return {
        "mIoU": 100.0 * _nanmean(ious),
        "mAcc": 100.0 * mean_accuracy(cm),
        "aAcc": 100.0 * overall_accuracy(cm),
        "per_class": {name: None if np.isnan(iou) else 100.0 * float(iou) for name, iou in zip(class_names, ious)},
        "false_positive_pixels": false_positive_pixels(cm, class_names),
    }


def boundary_distance(target: ArrayLike, ignore_index: int = 255) -> np.ndarray:
    """Euclidean distance, in pixels, from each pixel to the nearest ground-truth boundary pixel.

    A boundary pixel is one with a 4-neighbour of a different label; both pixels of such a pair
    are boundary pixels (distance 0). The ignore label counts as a label here, so the edge of an
    ignored region is a boundary too; the image border is not. Ignored pixels get ``inf``, and so
    does every pixel of an image without any boundary.

    Args:
        target: ground-truth labels of shape (H, W), or (..., H, W) for a stack of images that
            are treated one by one.

    Returns:
        float64 array of ``target``'s shape.
    """
    t = _as_numpy(target)
    if t.ndim < 2:
        raise ValueError(f"target must have at least 2 dimensions (H, W), got shape {t.shape}")
    images = t.reshape(-1, *t.shape[-2:])
    out = np.empty(images.shape, dtype=np.float64)
    for i, label in enumerate(images):
        edge = np.zeros(label.shape, dtype=bool)
        dx = label[:, 1:] != label[:, :-1]
        dy = label[1:, :] != label[:-1, :]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        dist = ndimage.distance_transform_edt(~edge) if edge.any() else np.full(label.shape, np.inf)
        dist[label == ignore_index] = np.inf
        out[i] = dist
    return out.reshape(t.shape)


def boundary_distance_bands(
    target: ArrayLike, ignore_index: int = 255, bands: Sequence[float] = DEFAULT_TRIMAP_WIDTHS
) -> dict[float, np.ndarray]:
    """Boolean masks ``{width: mask}`` of the pixels within each width of a boundary.

    The distance transform is computed once for all widths; see :func:`boundary_mask`.
    """
    for width in bands:
        if width <= 0:
            raise ValueError(f"band widths must be positive, got {width}")
    dist = boundary_distance(target, ignore_index)
    return {width: dist < width for width in bands}


def boundary_mask(target: ArrayLike, width: float, ignore_index: int = 255) -> np.ndarray:
    """Pixels within ``width`` pixels of a ground-truth label boundary, as a bool array.

    A pixel is in the band when its distance to the nearest boundary pixel
    (:func:`boundary_distance`) is below ``width``: width 1 keeps the two pixel rows touching a
    boundary, width w about w pixels on each side. Ignored pixels are never in the band.
    """
    return boundary_distance_bands(target, ignore_index, (width,))[width]


def trimap_confusion_matrices(
    pred: ArrayLike,
    target: ArrayLike,
    widths: Sequence[float],
    num_classes: int,
    ignore_index: int = 255,
) -> dict[float, np.ndarray]:
    """Confusion matrix of each boundary band: ``{width: (K, K) int64}``.

    To score a dataset, sum each width's matrices over its images, then read them with
    :func:`overall_accuracy` and :func:`mean_iou` as :func:`trimap_accuracy` does for one batch.
    """
    t = _as_numpy(target)
    p = _as_numpy(pred)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    bands = boundary_distance_bands(t, ignore_index, widths)
    return {
        width: confusion_matrix(p[mask], t[mask], num_classes, ignore_index) for width, mask in bands.items()
    }


def trimap_accuracy(
    pred: ArrayLike,
    target: ArrayLike,
    widths: Sequence[float],
    num_classes: int,
    ignore_index: int = 255,
) -> dict[float, dict[str, float]]:
    """Pixel accuracy and mIoU restricted to the band of each width around the gt boundaries.

    Args:
        pred, target: label maps of shape (H, W) or (..., H, W).
        widths: band widths in pixels (see :func:`boundary_mask`), e.g. ``DEFAULT_TRIMAP_WIDTHS``.
        num_classes: K.
        ignore_index: label of unscored pixels.

    Returns:
        ``{width: {"accuracy": percent, "mIoU": percent, "pixels": int}}`` (:func:`band_scores`: mIoU over the
        ground truth's classes in the band); "pixels" is the number of scored pixels in the band, and the two
        scores are NaN when it is 0.
    """
    cms = trimap_confusion_matrices(pred, target, widths, num_classes, ignore_index)
    nan = float("nan")
    return {width: {key: nan if value is None else value for key, value in band_scores(cm).items()}
            for width, cm in cms.items()}
