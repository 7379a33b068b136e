"""ModelConfig: everything needed to rebuild a model, stored as a checkpoint's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .backbones import BACKBONES
from .ifa import IFA_READS, POSITION_ENCODINGS

ARCHITECTURES = ("fpn", "ifa")
IFA_FEATURES = ("lateral", "fpn")
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # on 0-255 pixels, RGB
IMAGENET_STD = (58.395, 57.12, 57.375)


class ConfigError(ValueError):
    """A config.json that cannot describe a model."""


@dataclass
class ModelConfig:
    """Architecture, classes and normalisation of a segmentation model.

    architecture "fpn": Semantic FPN with a `neck_channels` FPN neck and a `head_channels` head.
    architecture "ifa": per-level 1x1 conv + BN + ReLU to `neck_channels`, then the IFA MLP with
    hidden widths `mlp_channels` and a `pos_encoding` of width `pos_dim`. `ifa_features` "fpn" feeds
    the IFA head the FPN neck's outputs instead (a variant: top-down pathway and 3x3 convs kept).
    `ifa_dropout` > 0 adds channel dropout before the IFA classifier (a variant; the paper has none).
    `ifa_read` "nearest" (the paper) reads each level's cell containing the query; "ensemble" (a named variant,
    LIIF's local ensemble) reads the four nearest cells weighted by area, so a dense query is continuous; "centred"
    (a named variant) reads the cell whose feature centre is nearest, cells centred where their features sit.
    `aux_channels` > 0 adds the training-only auxiliary head on the stride-16 map.
    `align_corners` applies to the final bilinear upsampling (the reference code uses True).
    """

    architecture: str
    backbone: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    dataset: str = ""
    ignore_index: int = 255
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    neck_channels: int = 256
    head_channels: int = 128
    mlp_channels: list[int] = field(default_factory=lambda: [512, 256, 256])
    pos_encoding: str = "learned"
    pos_dim: int = 24
    ifa_features: str = "lateral"
    ifa_dropout: float = 0.0
    ifa_read: str = "nearest"
    aux_channels: int = 0
    align_corners: bool = False

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if not self.class_names:
            self.class_names = [f"class {i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ConfigError(f"num_classes is {self.num_classes} but {len(self.class_names)} class names are given")
        if not self.palette:
            self.palette = default_palette(self.num_classes)
        if len(self.palette) != self.num_classes:
            raise ConfigError(f"num_classes is {self.num_classes} but the palette has {len(self.palette)} colours")
        if self.ifa_features not in IFA_FEATURES:
            raise ConfigError(f"unknown ifa_features {self.ifa_features!r}; valid: {', '.join(IFA_FEATURES)}")
        if self.ifa_read not in IFA_READS:
            raise ConfigError(f"unknown ifa_read {self.ifa_read!r}; valid: {', '.join(IFA_READS)}")
        if not 0.0 <= self.ifa_dropout < 1.0:
            raise ConfigError(f"ifa_dropout must be in [0, 1), got {self.ifa_dropout!r}")
        if self.pos_encoding not in POSITION_ENCODINGS:
            raise ConfigError(f"unknown pos_encoding {self.pos_encoding!r}; valid: {', '.join(POSITION_ENCODINGS)}")
        if self.pos_encoding not in ("none", "coord") and (self.pos_dim <= 0 or self.pos_dim % 4):
            raise ConfigError(f"pos_dim must be a positive multiple of 4, got {self.pos_dim}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std need three values (RGB, 0-255 pixel scale)")

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known: {sorted(known)}")
        missing = [k for k in ("architecture", "backbone", "num_classes") if k not in data]
        if missing:
            raise ConfigError(f"config lacks required keys {missing}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_palette(num_classes: int) -> list[list[int]]:
    """Distinct colours for classes without an official palette (the PASCAL VOC bit pattern)."""
    palette = []
    for index in range(num_classes):
        colour, value = [0, 0, 0], index + 1
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette.append(colour)
    return palette
