"""Tests of the feature backbones: the feature_info contract, the reference ResNet, Lite0 ImageNet weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from ifa.models.backbones import BACKBONES, MULTI_GRID, create_backbone, lite0_classifier_state_dict

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]



def level_sizes(name: str, h: int, w: int) -> list[tuple[int, int]]:
    """Expected (h_l, w_l) of the stride 4, 8, 16, 32 maps for an input of size (h, w).

    Every backbone halves (rounding up) from level to level. The stride-4 map is (h/4, w/4) for
    sizes that are multiples of 32, except for the reference ResNet: its ceil-mode max-pool
    (3x3, stride 2, padding 1) maps the stride-2 stem output s to s // 2 + 1, e.g. 32 -> 17.
    """
    if name.endswith("_deepstem"):
        first = (math.ceil(h / 2) // 2 + 1, math.ceil(w / 2) // 2 + 1)
    else:
        first = (h // 4, w // 4)
    sizes = [first]
    for _ in range(3):
        sizes.append(tuple(math.ceil(s / 2) for s in sizes[-1]))
    return sizes


@pytest.mark.parametrize("name", BACKBONES)
def test_feature_info_contract(name):
    backbone = create_backbone(name).eval()
    assert backbone.reductions == [4, 8, 16, 32]
    assert len(backbone.channels) == 4
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 96))  # multiples of 32 (HRNet needs them)
    assert isinstance(feats, list) and len(feats) == 4
    assert [f.shape[1] for f in feats] == backbone.channels
    assert [tuple(f.shape[-2:]) for f in feats] == level_sizes(name, 64, 96)
    if not name.endswith("_deepstem"):
        # The stated reductions are the exact strides: 64x96 / r.
        assert [tuple(f.shape[-2:]) for f in feats] == [(64 // r, 96 // r) for r in backbone.reductions]


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_backbone("vgg16")
    for name in BACKBONES:
        assert name in str(err.value)


def test_deepstem_resnet_matches_the_reference_layout():
    body = create_backbone("resnet50_deepstem").body
    convs = [m for m in body.conv1 if isinstance(m, nn.Conv2d)]
    # Deep stem: three 3x3 convs 3 -> 64 -> 64 -> 128, the first with stride 2, BN after the first two.
    assert [tuple(c.weight.shape) for c in convs] == [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert [type(m).__name__ for m in body.conv1][:6] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    assert body.bn1.num_features == 128
    assert body.layer1[0].conv1.in_channels == 128
    # Ceil-mode 3x3 / 2 max-pool: a 32x48 stem output becomes 17x25 (floor mode would give 16x24).
    pool = body.maxpool
    assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert pool(torch.zeros(1, 1, 32, 48)).shape[-2:] == (17, 25)
    # Multi-grid layer4: dilations (2, 2, 4) with matching padding, and layer4 keeps its stride 2.
    assert MULTI_GRID == (2, 2, 4)
    assert [block.conv2.dilation for block in body.layer4] == [(2, 2), (2, 2), (4, 4)]
    assert [block.conv2.padding for block in body.layer4] == [(2, 2), (2, 2), (4, 4)]
    assert body.layer4[0].conv2.stride == (2, 2)
    assert body.layer4[0].downsample is not None
    for layer in (body.layer1, body.layer2, body.layer3):
        assert all(block.conv2.dilation == (1, 1) for block in layer)


def test_deepstem_dilations_are_used_in_forward():
    """The patched dilation changes layer4's output (it is not just an attribute nobody reads)."""
    torch.manual_seed(0)
    body = create_backbone("resnet50_deepstem").body.eval()
    block = body.layer4[2]
    x = torch.randn(1, 2048, 5, 5)
    with torch.no_grad():
        dilated = block.conv2(block.conv1(x))
        plain = F.conv2d(block.conv1(x), block.conv2.weight, padding=1)
    assert dilated.shape == plain.shape
    assert not torch.allclose(dilated, plain)


def _imagenet_batch(image: np.ndarray) -> torch.Tensor:
    """ImageNet preprocessing: resize the short side to 224 (antialiased bilinear), centre crop 224, mean/std."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    scale = 224 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True,
                      align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top:top + 224, left:left + 224]
    return (x - IMAGENET_MEAN) / IMAGENET_STD


@pytest.fixture(scope="module")
def lite0_state():
    return lite0_classifier_state_dict()


def test_lite0_imagenet_weights_classify_real_photos(lite0_state):
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model("efficientnet_lite0")
    model.load_state_dict(lite0_state)  # strict: every tensor of the classifier
    model.eval()
    cases = [
        (skimage_data.chelsea(), {281, 282, 285}),  # a tabby cat: tabby, tiger cat, Egyptian cat
        (skimage_data.coffee(), {967, 968}),  # espresso, cup
    ]
    for image, accepted in cases:
        with torch.no_grad():
            probs = model(_imagenet_batch(image)).softmax(-1)[0]
        top5 = set(probs.topk(5).indices.tolist())
        assert top5 & accepted, f"top-5 {sorted(top5)} holds none of {sorted(accepted)}"
        # The top-1 class is one of the accepted ones too (observed: 285 at 0.34, 967 at 0.90).
        assert probs.argmax().item() in accepted


def test_pretrained_lite0_backbone_has_the_imagenet_weights(lite0_state):
    backbone = create_backbone("efficientnet_lite0", pretrained=True)
    body = backbone.body
    assert torch.equal(body.conv_stem.weight, lite0_state["conv_stem.weight"])
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(body.bn1, key), lite0_state[f"bn1.{key}"])
    # Every backbone tensor comes from the state dict (not only the stem).
    own = body.state_dict()
    loaded = [k for k in own if not k.endswith("num_batches_tracked")]
    assert loaded and all(torch.equal(own[k], lite0_state[k]) for k in loaded)
    # And differs from a fresh random init.
    assert not torch.equal(create_backbone("efficientnet_lite0").body.conv_stem.weight, body.conv_stem.weight)
