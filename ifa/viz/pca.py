"""Per-pixel features projected to their first three principal components, shown as RGB."""

from __future__ import annotations

import numpy as np
import torch

from .draw import resize


def pca_project(features: np.ndarray, components: int = 3, max_fit: int = 4096,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """features (D, h, w) -> (projection (components, h, w), explained variance ratio (components,)).

    The principal axes are fitted on at most `max_fit` random pixels; each axis' sign is chosen so
    that its largest loading is positive (a deterministic choice; signs carry no meaning).
    """
    d, h, w = features.shape
    flat = torch.as_tensor(np.asarray(features)).float().reshape(d, -1).T  # (N, D); torch casts float16 fast
    generator = torch.Generator().manual_seed(seed)
    if flat.shape[0] > max_fit:  # a random subset, read in memory order (faster than a shuffled gather)
        fit = flat.index_select(0, torch.randperm(flat.shape[0], generator=generator)[:max_fit].sort().values)
    else:
        fit = flat
    mean = fit.double().mean(dim=0).float()
    centred = fit - mean  # float32 products (centred, so no cancellation), the eigendecomposition in float64
    cov = (centred.T @ centred).double() / max(fit.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(values, descending=True)[:components]
    axes = vectors[:, order]
    axes = axes * torch.sign(axes[axes.abs().argmax(dim=0), torch.arange(axes.shape[1])])[None, :]
    total = values.clamp(min=0).sum()
    explained = (values[order].clamp(min=0) / total if total > 0 else torch.zeros(len(order))).numpy()
    projection = ((flat - mean) @ axes.float()).T.reshape(-1, h, w).numpy()
    if projection.shape[0] < components:  # fewer feature channels than components
        projection = np.concatenate([projection, np.zeros((components - projection.shape[0], h, w))], axis=0)
        explained = np.concatenate([explained, np.zeros(components - len(explained))])
    return projection.astype(np.float32), explained.astype(np.float32)


def pca_rgb(features: np.ndarray, size: tuple[int, int] | None = None, max_fit: int = 4096,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """features (D, h, w) -> (uint8 RGB image of the 3 leading components, explained variance ratio (3,)).

    Each component is stretched between its 1st and 99th percentile. `size` (width, height) resizes the
    result bilinearly (the same as projecting bilinearly upsampled features, up to that stretch).
    """
    projection, explained = pca_project(features, 3, max_fit, seed)
    channels = []
    for comp in projection:
        low, high = np.percentile(comp, [1, 99])
        channels.append(np.clip((comp - low) / (high - low), 0, 1) if high > low else np.zeros_like(comp))
    rgb = (np.stack(channels, axis=-1) * 255 + 0.5).astype(np.uint8)
    if size is not None:
        rgb = resize(rgb, size)
    return rgb, explained
