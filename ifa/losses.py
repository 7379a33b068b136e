"""Segmentation losses: cross-entropy with online hard example mining (OHEM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 100000,
                       ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over the hard pixels: those whose ground-truth probability is below
    `thresh`, or the `min_kept` hardest when fewer are below it (all pixels when fewer exist).
    Zero (with a gradient path) when no pixel is valid or, with min_kept = 0, none is below `thresh`.

    logits (B, K, H, W), target (B, H, W) int64 with `ignore_index` for unlabelled pixels.
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = torch.exp(-loss.detach()[valid])  # probability of the ground-truth class
        if prob.numel() <= min_kept:
            keep = torch.ones_like(prob, dtype=torch.bool)
        else:
            threshold = torch.tensor(thresh, device=prob.device, dtype=prob.dtype)
            if min_kept > 0:
                threshold = torch.maximum(threshold, prob.kthvalue(min_kept).values)
            keep = prob <= threshold
    if not keep.any():  # possible only without a min_kept floor: nothing is hard enough
        return logits.sum() * 0.0
    return loss[valid][keep].mean()
