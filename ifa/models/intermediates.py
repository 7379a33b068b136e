"""What a head computes inside, returned by the heads' `inspect` and `SegmentationModel.inspect`."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadIntermediates:
    """What a head computes on its grid (h, w), for a batch of B: the inside view of `SegmentationModel.inspect`.

    level_norms (B, L, h, w) float32: the L2 norm over channels of each level's contribution to the head's first
    sum (Semantic FPN: each level's branch at stride 4; IFA: each level's term of the first MLP layer);
    features (B, D, h, w): the last features before the classifier; logits (B, K, h, w).
    """

    level_norms: torch.Tensor
    features: torch.Tensor
    logits: torch.Tensor
