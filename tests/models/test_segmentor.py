"""Tests of SegmentationModel: output sizes, padding, arbitrary-resolution querying, aux head, create_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ifa.models import ConfigError, ModelConfig, SegmentationModel, create_model

K = 3
# Tiny widths: the decoders cost nothing next to the backbone.
TINY = {"num_classes": K, "neck_channels": 8, "head_channels": 6, "mlp_channels": [16, 8], "pos_dim": 8}
ODD = (67, 93)  # Lite0 levels: 17x24, 9x12, 5x6, 3x3



def tiny_model(architecture: str, backbone: str = "efficientnet_lite0", **overrides) -> SegmentationModel:
    torch.manual_seed(0)
    return create_model(architecture=architecture, backbone=backbone, **{**TINY, **overrides}).eval()


@pytest.fixture(scope="module")
def ifa_model():
    return tiny_model("ifa")


@pytest.fixture(scope="module")
def fpn_model():
    return tiny_model("fpn")


def image(h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


# Logits at odd sizes, batch 1 and 2, with and without align_corners: the shared contract (test_model_contract.py).


@pytest.mark.parametrize("architecture", ["fpn", "ifa"])
def test_forward_is_the_upsampled_stride_4_logits(architecture, ifa_model, fpn_model):
    model = ifa_model if architecture == "ifa" else fpn_model
    x = image(*ODD)
    with torch.no_grad():
        coarse = model.decoder(model.backbone(x))
        expected = F.interpolate(coarse, size=ODD, mode="bilinear", align_corners=False)
        assert coarse.shape[-2:] == (17, 24)
        torch.testing.assert_close(model(x), expected)  # same ops, same order: float32 defaults


def test_hrnet_pads_internally():
    """HRNet needs multiples of 32: 67x93 is zero-padded to 96x96, run, and cropped back."""
    model = tiny_model("fpn", backbone="hrnet_w18")
    assert model.size_divisor == 32
    x = image(*ODD)
    with torch.no_grad():
        logits = model(x)
        padded = model(F.pad(x, (0, 96 - 93, 0, 96 - 67)))
    assert logits.shape == (1, K, *ODD)
    assert padded.shape == (1, K, 96, 96)
    # The same computation on the same padded tensor, then a crop: equal up to float32 noise.
    torch.testing.assert_close(logits, padded[..., :67, :93], atol=1e-5, rtol=1e-5)


def test_hrnet_ifa_querying_needs_divisible_sizes():
    model = tiny_model("ifa", backbone="hrnet_w18")
    with pytest.raises(ValueError, match="divisible by 32"):
        model.predict_grid(image(*ODD))


def test_predict_grid_default_is_the_stride_4_grid(ifa_model):
    x = image(*ODD)
    with torch.no_grad():
        grid = ifa_model.predict_grid(x)
        assert grid.shape == (1, K, 17, 24)
        torch.testing.assert_close(grid, ifa_model.decoder(ifa_model.backbone(x)))


def test_predict_grid_at_full_resolution_is_bilinear_free_querying(ifa_model):
    """predict_grid(x, size=x.shape[-2:]) == the IFA formula evaluated at every pixel, == query_points there."""
    x = image(*ODD)
    h, w = ODD
    with torch.no_grad():
        levels = ifa_model.levels(x)
        full = ifa_model.predict_grid(x, size=x.shape[-2:])
        reference = ifa_model.decoder.head.forward_reference(levels, (h, w))
        ys = -1 + (2 * torch.arange(h, dtype=torch.float64) + 1) / h  # pixel centres, normalised (y, x)
        xs = -1 + (2 * torch.arange(w, dtype=torch.float64) + 1) / w
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(1, -1, 2).float()
        points = ifa_model.query_points(x, coords)
    assert full.shape == (1, K, h, w)
    # float32, O(1) logits, the same sums in another order: 1e-5 absolute.
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(points, full.flatten(2), atol=1e-5, rtol=1e-4)
    # And it is not a bilinear upsampling of the stride-4 logits.
    assert not torch.allclose(full, ifa_model(x), atol=1e-3)


@pytest.mark.parametrize("architecture", ["fpn", "ifa"])
def test_forward_with_aux(architecture):
    x = image(64, 96, batch=2)
    with_aux = tiny_model(architecture, aux_channels=4)
    without = tiny_model(architecture)
    with torch.no_grad():
        logits, aux = with_aux.forward_with_aux(x)
        plain_logits, none = without.forward_with_aux(x)
    assert logits.shape == plain_logits.shape == (2, K, 64, 96)
    assert aux.shape == (2, K, 64 // 16, 96 // 16)  # the stride-16 grid
    assert none is None
    assert without.aux_head is None
    assert with_aux.aux_head.block[0][0].in_channels == with_aux.backbone.channels[2]


@pytest.mark.parametrize("architecture,width", [("fpn", TINY["head_channels"]), ("ifa", TINY["mlp_channels"][-1])])
def test_decode_features_shapes(architecture, width, ifa_model, fpn_model):
    model = ifa_model if architecture == "ifa" else fpn_model
    with torch.no_grad():
        assert model.decode_features(image(*ODD, batch=2)).shape == (2, width, 17, 24)


def test_predict_grid_on_an_fpn_model_raises(fpn_model):
    with pytest.raises(ValueError, match="IFA"):
        fpn_model.predict_grid(image(64, 96), size=(64, 96))


def test_query_points_on_an_fpn_model_raises_value_error(fpn_model):
    """The documented ValueError, not an AttributeError from looking up SemanticFPNHead.query_points."""
    with pytest.raises(ValueError, match="IFA"):
        fpn_model.query_points(image(64, 96), torch.zeros(1, 4, 2))


def test_ifa_decoder_layout(ifa_model):
    decoder = ifa_model.decoder
    assert [block[0].in_channels for block in decoder.reduce] == ifa_model.backbone.channels
    assert all(block[0].kernel_size == (1, 1) and block[0].out_channels == 8 for block in decoder.reduce)
    assert decoder.head.in_channels == [8] * 4
    # First MLP layer: 4 (C + P) inputs with P = 2 + 8 for the 'learned' encoding.
    assert decoder.head.hidden[0].in_channels == 4 * (8 + 10)
    assert not hasattr(decoder, "neck")  # no top-down pathway


def test_ifa_on_fpn_features_differs_from_fpn_only_in_the_head():
    """ifa_features='fpn': the IFA head reads the FPN neck's outputs; with the baseline's backbone and neck
    weights loaded, the head's inputs are exactly the baseline's, and the head is the same IFA function."""
    fpn, variant = tiny_model("fpn"), tiny_model("ifa", ifa_features="fpn")
    assert not hasattr(variant.decoder, "reduce")
    shared = {k: v for k, v in fpn.state_dict().items() if k.startswith(("backbone.", "decoder.neck."))}
    missing, unexpected = variant.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith("decoder.head.") for k in missing)
    x = image(*ODD)
    with torch.no_grad():
        levels = variant.levels(x)
        for a, b in zip(levels, fpn.levels(x)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)  # same modules, same inputs: bitwise
        # Fast inference path vs the written-out formula on these features (float32 noise).
        torch.testing.assert_close(variant.decoder(variant.backbone(x)),
                                   variant.decoder.head.forward_reference(levels), atol=1e-5, rtol=1e-4)


def test_unknown_ifa_features_is_a_config_error():
    with pytest.raises(ConfigError, match="ifa_features"):
        ModelConfig(architecture="ifa", backbone="efficientnet_lite0", num_classes=K, ifa_features="neck")


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_ifa_dropout_out_of_range_is_a_config_error(p):
    with pytest.raises(ConfigError, match="ifa_dropout"):
        ModelConfig(architecture="ifa", backbone="efficientnet_lite0", num_classes=K, ifa_dropout=p)


def test_ifa_dropout_reaches_the_head_and_adds_no_weights():
    dropped = tiny_model("ifa", ifa_features="fpn", ifa_dropout=0.1)
    assert dropped.decoder.head.dropout.p == 0.1
    assert dropped.state_dict().keys() == tiny_model("ifa", ifa_features="fpn").state_dict().keys()


def test_create_model_overrides():
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", **TINY, pos_encoding="coord")
    assert isinstance(model, SegmentationModel) and model.is_ifa
    assert model.config.pos_encoding == "coord" and model.config.num_classes == K
    cfg = ModelConfig(architecture="fpn", backbone="efficientnet_lite0", **TINY)
    # cfg's class names and palette were filled for 3 classes, so a new class count needs new ones too.
    fpn = create_model(cfg, num_classes=5, class_names=[f"c{i}" for i in range(5)],
                       palette=[[i, i, i] for i in range(5)])
    assert not fpn.is_ifa and fpn.config.num_classes == 5
    assert fpn.decoder.head.classifier.out_channels == 5
    assert cfg.num_classes == K  # the given config is not modified
    from_dict = create_model(cfg.to_dict(), architecture="ifa")
    assert from_dict.is_ifa and from_dict.config.neck_channels == 8
    with pytest.raises(ConfigError):
        create_model(cfg, not_a_key=1)
    with pytest.raises(ConfigError):
        create_model(architecture="ifa")  # backbone and num_classes missing
