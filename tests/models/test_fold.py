"""BatchNorm folding and activation fusion (inference): the folded model computes the unfolded model's logits."""

from __future__ import annotations

import pytest
import torch
from model_contract import randomise_norms
from torch import nn

from ifa.inference import cpu_supports_bf16
from ifa.models import create_model
from ifa.models.fold import ConvAct2d, conv_bn_pairs, fold_batchnorm, fuse_activations

TINY = {"backbone": "efficientnet_lite0", "num_classes": 5, "neck_channels": 8, "head_channels": 6,
        "mlp_channels": [16, 8], "pos_dim": 8}


def count_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def count_fused(module: nn.Module) -> int:
    return sum(isinstance(m, ConvAct2d) for m in module.modules())


BACKBONES = ("efficientnet_lite0", "resnet50", "resnest50", "hrnet_w18")
CASES = [(b, "fpn", "fpn") for b in BACKBONES] + [(b, "ifa", "lateral") for b in BACKBONES] + [
    ("efficientnet_lite0", "ifa", "fpn")]


@pytest.mark.parametrize("backbone,architecture,features", CASES)
def test_folded_model_computes_the_same_logits(backbone, architecture, features):
    torch.manual_seed(0)
    model = randomise_norms(create_model(architecture=architecture, ifa_features=features, aux_channels=8,
                                         **{**TINY, "backbone": backbone}))
    x = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))  # HRNet: divisible by 32
    with torch.no_grad():
        want = model(x)
        head_norms = count_norms(model.decoder.head)
        model.fold_batchnorm()
        got = model(x)
    # fp32 rounding of the folded weights only: max |diff| within 1e-5 of the largest |logit| (random ResNets
    # reach ~500)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (got - want).abs().max()
    assert count_norms(model.backbone) == 0  # every backbone BatchNorm follows a convolution
    assert count_fused(model.backbone) > 0  # ReLU6 (EfficientNet-Lite0) or ReLU after a convolution
    if architecture == "ifa":  # the IFA head folds its own in its fast path and keeps them for its other paths
        assert count_norms(model.decoder.head) == head_norms > 0
        assert count_norms(model.decoder) == head_norms
    else:
        assert count_norms(model.decoder) == 0


def test_folded_ifa_model_keeps_its_head_paths():
    torch.manual_seed(0)
    model = randomise_norms(create_model(architecture="ifa", ifa_features="lateral", **TINY))
    x = torch.randn(1, 3, 67, 93)
    coords = torch.rand(1, 40, 2) * 2 - 1
    with torch.no_grad():
        want = model.query_points(x, coords), model.predict_grid(x, x.shape[-2:])
        model.fold_batchnorm()
        got = model.query_points(x, coords), model.predict_grid(x, x.shape[-2:])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_a_folded_model_refuses_training():
    model = create_model(architecture="fpn", **TINY).fold_batchnorm()
    model.eval()  # eval stays allowed
    with pytest.raises(RuntimeError, match="folded"):
        model.train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(create_model(architecture="fpn", **TINY).train(), lambda: None)


class ResidualBeforeNorm(nn.Module):
    """conv -> += skip (in place) -> BatchNorm: the norm's input is the conv's output tensor, but changed."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.conv2, self.bn2 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), \
            nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        y += x
        return self.bn2(self.conv2(self.bn(y)))


def test_pairs_skip_a_convolution_output_changed_in_place():
    model = randomise_norms(ResidualBeforeNorm())
    x = torch.randn(2, 3, 8, 8)
    assert conv_bn_pairs(model, lambda: model(x)) == [("conv2", "bn2")]
    with torch.no_grad():
        want = model(x)
        assert fold_batchnorm(model, lambda: model(x)) == 1
        assert torch.allclose(model(x), want, atol=1e-5)
    assert isinstance(model.bn, nn.BatchNorm2d) and isinstance(model.bn2, nn.Identity)


class ConvThenActivations(nn.Module):
    """conv -> ReLU6 and conv3 -> ReLU (in place): fusable; conv2 -> ReLU called twice: not fusable."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6()
        self.conv2, self.act2 = nn.Conv2d(4, 4, 1), nn.ReLU()
        self.conv3, self.act3 = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.ReLU(inplace=True)
        with torch.no_grad():
            self.conv.weight.mul_(8)  # ReLU6's upper bound is reached

    def forward(self, x):
        y = self.act2(self.act2(self.conv2(self.act(self.conv(x)))))
        return self.act3(self.conv3(y))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_activations_compute_conv_then_activation(dtype):
    if dtype == "bf16" and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    torch.manual_seed(0)
    model = ConvThenActivations().eval()
    x = torch.randn(2, 3, 17, 23).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with torch.no_grad(), autocast:
        want = model(x)
        assert model.act(model.conv(x)).max() == 6  # ReLU6's bound is exercised
        assert fuse_activations(model, lambda: model(x)) == 2  # act and act3; act2 runs twice
        got = model(x)
    assert isinstance(model.conv, ConvAct2d) and isinstance(model.act, nn.Identity)
    assert isinstance(model.conv2, nn.Conv2d) and isinstance(model.act2, nn.ReLU)
    assert got.dtype == want.dtype
    # fp32: rounding only; bf16: the same bf16 products (weights cast once instead of at every call)
    assert (got.float() - want.float()).abs().max() <= (1e-6 if dtype == "fp32" else 1e-2) * want.abs().max()
    with torch.no_grad(), autocast:
        assert torch.equal(model(x), got)  # the cast weights are reused
        model.conv.conv.weight.mul_(0.5)  # ... until the weights change
        assert not torch.equal(model(x), got)


def test_fused_convolution_falls_back_outside_inference():
    conv, act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
    fused = ConvAct2d(conv, act)
    x = torch.randn(1, 3, 8, 8)
    out = fused(x)  # grad enabled, trainable weights: conv then activation, differentiable
    out.sum().backward()
    assert conv.weight.grad is not None
    assert torch.allclose(out, act(conv(x)))
