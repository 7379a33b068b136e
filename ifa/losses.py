"""Segmentation losses: cross-entropy with online hard example mining (OHEM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 100000,
                       ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over the hard pixels: those whose ground-truth probability is below
    `thresh`, or the `min_kept` hardest when fewer are below it (all pixels when fewer exist).

    logits (B, K, H, W), target (B, H, W) int64 with `ignore_index` for unlabelled pixels.
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = target.flatten() != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    with torch.no_grad():
        prob = torch.exp(-loss.detach()[valid])  # probability of the ground-truth class
        threshold = torch.tensor(thresh, device=prob.device, dtype=prob.dtype)
        if prob.numel() > min_kept > 0:
            threshold = torch.maximum(threshold, prob.kthvalue(min_kept).values)
        keep = prob <= threshold if prob.numel() > min_kept > 0 else torch.ones_like(prob, dtype=torch.bool)
    return loss[valid][keep].mean()
