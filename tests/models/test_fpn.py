"""Tests of Semantic FPN: the neck's top-down sums and the semantic head's stages and sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ifa.models.fpn import AuxHead, FPNNeck, SemanticFPNHead

# Stride 4, 8, 16, 32 levels of a 67 x 93 input (odd, not halving evenly).
ODD_SIZES = [(17, 24), (9, 12), (5, 6), (3, 3)]
EVEN_SIZES = [(8, 12), (4, 6), (2, 3), (1, 2)]



def nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling written out: destination index i reads source floor(i * n_in / n_out)."""
    rows = torch.arange(size[0]) * x.shape[-2] // size[0]
    cols = torch.arange(size[1]) * x.shape[-1] // size[1]
    return x.index_select(-2, rows).index_select(-1, cols)


def identity_neck(channels: int) -> FPNNeck:
    """1x1 laterals = identity, 3x3 outputs = centre-tap identity, zero biases: outputs are the top-down sums."""
    neck = FPNNeck([channels] * 4, channels)
    with torch.no_grad():
        for conv in neck.lateral:
            conv.weight.copy_(torch.eye(channels)[:, :, None, None])
            conv.bias.zero_()
        for conv in neck.output:
            conv.weight.zero_()
            conv.weight[:, :, 1, 1] = torch.eye(channels)
            conv.bias.zero_()
    return neck


def test_neck_top_down_sums_by_hand():
    """2x2-nearest pyramid with constant maps: P4 = C4, P3 = C3 + C4, P2 = C2 + C3 + C4, P1 = all four."""
    neck = identity_neck(2)
    values = [1.0, 10.0, 100.0, 1000.0]
    feats = [torch.full((1, 2, h, w), v) for v, (h, w) in zip(values, EVEN_SIZES)]
    with torch.no_grad():
        outs = neck(feats)
    expected = [1111.0, 1110.0, 1100.0, 1000.0]
    for out, v, (h, w) in zip(outs, expected, EVEN_SIZES):
        assert out.shape == (1, 2, h, w)
        # Interior only: the 3x3 conv's zero padding does not matter with a centre-tap kernel, but
        # check everything anyway; the sums are exact in float32.
        assert torch.equal(out, torch.full_like(out, v))


def test_neck_top_down_uses_nearest_upsampling_by_hand():
    """A 1x2 coarse map [a, b] added to a 2x4 finer map copies each value to a 2x2 block."""
    neck = identity_neck(1)
    c4 = torch.tensor([[[[1.0, 2.0]]]])
    feats = [torch.zeros(1, 1, 8, 16), torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 2, 4), c4]
    with torch.no_grad():
        outs = neck(feats)
    assert torch.equal(outs[2][0, 0], torch.tensor([[1.0, 1.0, 2.0, 2.0]] * 2))
    assert torch.equal(outs[0][0, 0, :, :8], torch.ones(8, 8))
    assert torch.equal(outs[0][0, 0, :, 8:], torch.full((8, 8), 2.0))


@pytest.mark.parametrize("sizes", [EVEN_SIZES, ODD_SIZES], ids=["even", "odd"])
def test_neck_matches_a_plain_reimplementation(sizes):
    torch.manual_seed(0)
    in_channels = [3, 5, 4, 6]
    neck = FPNNeck(in_channels, 7)
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip(in_channels, sizes)]
    with torch.no_grad():
        laterals = [torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], f) + conv.bias[None, :, None, None]
                    for conv, f in zip(neck.lateral, feats)]
        merged = [laterals[3]]
        for lateral in reversed(laterals[:3]):
            merged.insert(0, lateral + nearest(merged[0], lateral.shape[-2:]))
        expected = [F.conv2d(x, conv.weight, conv.bias, padding=1) for conv, x in zip(neck.output, merged)]
        outs = neck(feats)
    for out, exp, (h, w) in zip(outs, expected, sizes):
        assert out.shape == (2, 7, h, w)
        torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5)  # float32, same sums reordered


def test_semantic_head_stage_counts():
    head = SemanticFPNHead(in_channels=6, channels=4, num_classes=3)
    assert [len(stage) for stage in head.stages] == [1, 1, 2, 3]
    for stage in head.stages:
        for k, block in enumerate(stage):
            conv, norm, act = block
            assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            assert (conv.in_channels, conv.out_channels) == ((6 if k == 0 else 4), 4)
            assert isinstance(norm, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
    assert head.dropout.p == pytest.approx(0.1)
    assert head.classifier.kernel_size == (1, 1)
    assert (head.classifier.in_channels, head.classifier.out_channels) == (4, 3)


@pytest.mark.parametrize("sizes", [EVEN_SIZES, ODD_SIZES, [(13, 7), (7, 4), (4, 2), (2, 1)]],
                         ids=["even", "odd", "odd-narrow"])
def test_semantic_head_output_at_stride_4(sizes):
    torch.manual_seed(0)
    head = SemanticFPNHead(in_channels=6, channels=4, num_classes=3).eval()
    feats = [torch.randn(2, 6, h, w) for h, w in sizes]
    with torch.no_grad():
        assert head.decode_features(feats).shape == (2, 4, *sizes[0])
        assert head(feats).shape == (2, 3, *sizes[0])


def test_semantic_head_matches_a_plain_reimplementation():
    """Per level: conv stage, then a 2x bilinear step to the next finer level's size while above stride 4."""
    torch.manual_seed(0)
    head = SemanticFPNHead(in_channels=6, channels=4, num_classes=3).eval()
    feats = [torch.randn(1, 6, h, w) for h, w in ODD_SIZES]
    with torch.no_grad():
        total = 0
        for level, (stage, x) in enumerate(zip(head.stages, feats)):
            for k in range(len(stage)):
                x = stage[k](x)
                if level > 0:  # level 1 -> sizes[0]; level 3 -> sizes[2], sizes[1], sizes[0]
                    x = F.interpolate(x, size=ODD_SIZES[level - 1 - k], mode="bilinear", align_corners=False)
            total = total + x
        expected = head.classifier(total)  # dropout is the identity in eval mode
        torch.testing.assert_close(head(feats), expected, atol=1e-6, rtol=1e-6)


def test_aux_head_keeps_the_stride_16_grid():
    aux = AuxHead(in_channels=6, channels=4, num_classes=3).eval()
    with torch.no_grad():
        assert aux(torch.randn(2, 6, 5, 6)).shape == (2, 3, 5, 6)
