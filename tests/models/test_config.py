"""Tests of ModelConfig: validation, the dict / JSON round trip and the default palette."""

from __future__ import annotations

import json

import pytest

from ifa.models.backbones import BACKBONES
from ifa.models.config import ARCHITECTURES, ConfigError, ModelConfig, default_palette
from ifa.models.ifa import POSITION_ENCODINGS

BASE = {"architecture": "ifa", "backbone": "efficientnet_lite0", "num_classes": 3}


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("key,value,valid", [
    ("architecture", "deeplab", ARCHITECTURES),
    ("backbone", "vgg16", BACKBONES),
    ("pos_encoding", "fourier", POSITION_ENCODINGS),
])
def test_unknown_choices_name_the_valid_ones(key, value, valid):
    with pytest.raises(ConfigError) as err:
        config(**{key: value})
    message = str(err.value)
    assert value in message
    assert all(name in message for name in valid)


@pytest.mark.parametrize("pos_encoding", ["sine", "cosine", "fixed", "learned"])
@pytest.mark.parametrize("pos_dim", [10, 0, -8, 2])
def test_bad_pos_dim(pos_encoding, pos_dim):
    with pytest.raises(ConfigError, match="pos_dim"):
        config(pos_encoding=pos_encoding, pos_dim=pos_dim)


@pytest.mark.parametrize("pos_encoding", ["none", "coord"])
def test_pos_dim_is_irrelevant_without_frequencies(pos_encoding):
    assert config(pos_encoding=pos_encoding, pos_dim=10).pos_dim == 10


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, "3"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        config(num_classes=num_classes)


def test_class_name_count_mismatch():
    with pytest.raises(ConfigError, match="class names"):
        config(class_names=["road", "car"])


def test_palette_count_mismatch():
    with pytest.raises(ConfigError, match="palette"):
        config(palette=[[0, 0, 0], [255, 255, 255]])


def test_mean_std_need_three_values():
    with pytest.raises(ConfigError, match="mean and std"):
        config(mean=[0.5, 0.5])
    with pytest.raises(ConfigError, match="mean and std"):
        config(std=[1.0, 1.0, 1.0, 1.0])


def test_defaults_fill_names_and_palette():
    cfg = config()
    assert cfg.class_names == ["class 0", "class 1", "class 2"]
    assert cfg.palette == default_palette(3)
    assert (cfg.pos_encoding, cfg.pos_dim, cfg.mlp_channels) == ("learned", 24, [512, 256, 256])
    assert (cfg.neck_channels, cfg.head_channels, cfg.aux_channels) == (256, 128, 0)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({**BASE, "lr": 0.01, "arch": "ifa"})
    assert "arch" in str(err.value) and "lr" in str(err.value)


@pytest.mark.parametrize("missing", ["architecture", "backbone", "num_classes"])
def test_from_dict_requires_keys(missing):
    data = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize("data", [["ifa"], "ifa", None])
def test_from_dict_needs_an_object(data):
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_dict(data)


def test_round_trip_through_dict_and_json():
    cfg = config(architecture="fpn", backbone="resnet50_deepstem", class_names=["a", "b", "c"],
                 palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]], dataset="toy", ignore_index=0,
                 neck_channels=16, head_channels=8, mlp_channels=[32, 16], pos_encoding="sine", pos_dim=12,
                 ifa_features="fpn", ifa_dropout=0.1, aux_channels=4, align_corners=True)
    data = cfg.to_dict()
    assert set(data) == {"architecture", "backbone", "num_classes", "class_names", "palette", "dataset",
                         "ignore_index", "mean", "std", "neck_channels", "head_channels", "mlp_channels",
                         "pos_encoding", "pos_dim", "ifa_features", "ifa_dropout", "ifa_read", "aux_channels",
                         "align_corners"}
    assert ModelConfig.from_dict(data) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(data))) == cfg
    # to_dict returns copies: editing it leaves the config alone.
    data["class_names"].append("d")
    assert cfg.class_names == ["a", "b", "c"]


def test_round_trip_of_defaults():
    cfg = ModelConfig.from_dict(dict(BASE))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("num_classes", [1, 19, 150, 255])
def test_default_palette_distinct_colours(num_classes):
    palette = default_palette(num_classes)
    assert len(palette) == num_classes
    assert all(len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour) for colour in palette)
    assert len({tuple(colour) for colour in palette}) == num_classes


def test_default_palette_follows_the_voc_bit_pattern():
    # PASCAL VOC colours of indices 1, 2, 3, 4 (class 0 here takes VOC index 1, so no class is black).
    assert default_palette(4) == [[128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
