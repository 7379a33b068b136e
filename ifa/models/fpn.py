"""Semantic FPN (Kirillov et al., CVPR 2019, the semantic branch): FPN neck + semantic head.

Levels are lists of maps (B, C_l, h_l, w_l) at strides 4, 8, 16, 32, finest first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .intermediates import HeadIntermediates


def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FPNNeck(nn.Module):
    """1x1 lateral convs to `channels`, top-down pathway (nearest upsample + add), 3x3 output convs."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.output, laterals)]


class SemanticFPNHead(nn.Module):
    """Per level: [3x3 conv, BN, ReLU, 2x bilinear upsample while above stride 4] (1, 1, 2, 3 stages
    for strides 4..32); the maps are summed at stride 4, then dropout and a 1x1 classifier.

    Each upsample goes to the next finer level's exact size, so odd sizes stay aligned.
    Returns logits at the finest level's grid (B, K, h_1, w_1).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_levels: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.ModuleList(conv_bn_relu(in_channels if k == 0 else channels, channels, 3) for k in range(max(1, i)))
            for i in range(num_levels)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def level_branches(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each level's branch output at stride 4, before the sum: list of (B, channels, h_1, w_1)."""
        sizes = [f.shape[-2:] for f in feats]
        branches = []
        for level, (stage, x) in enumerate(zip(self.stages, feats)):
            for k, conv in enumerate(stage):
                x = conv(x)
                if level > 0:
                    x = F.interpolate(x, size=sizes[level - k - 1], mode="bilinear", align_corners=False)
            branches.append(x)
        return branches

    def decode_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The summed stride-4 features before dropout and classifier: (B, channels, h_1, w_1)."""
        return sum(self.level_branches(feats))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.decode_features(feats)))

    def inspect(self, feats: list[torch.Tensor]) -> HeadIntermediates:
        """From one pass: each level's branch norm, the summed features and the logits (eval: no dropout)."""
        branches = self.level_branches(feats)
        features = sum(branches)
        norms = torch.stack([b.float().norm(dim=1) for b in branches], dim=1)
        return HeadIntermediates(norms, features, self.classifier(self.dropout(features)))


class AuxHead(nn.Module):
    """Training-only auxiliary classifier on the stride-16 backbone map: 3x3 conv, BN, ReLU, dropout, 1x1."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.block = nn.Sequential(conv_bn_relu(in_channels, channels, 3), nn.Dropout2d(0.1),
                                   nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
