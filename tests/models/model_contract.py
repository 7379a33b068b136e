"""The contract every backbone x decoder meets (segmentation_models.pytorch's tests/models/base.py, for this project).

A test class per model sets `backbone`, `architecture` and, when it needs them, `config` overrides; the tests
below run on its random-init model with tiny widths (the backbone dominates the cost):

- forward at odd sizes, batch 1 and 2: logits (B, K, H, W), finite, and a sample's logits the same alone or in a
  batch (eval mode);
- the auxiliary head's stride-16 logits (training-only head) beside the same logits;
- BatchNorm folded (SegmentationModel.fold_batchnorm) computes the unfolded model's logits;
- save_pretrained / load_checkpoint_folder and push_to_hub / load_model through the loopback Hub
  (tests/hub_server.py) give the same weights and the same logits;
- `inspect(levels(x))` is what `forward(x)` computes: its logits are `head_logits`' and upsample to forward's.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from ifa import load_model, push_to_hub
from ifa.io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from ifa.models import SegmentationModel, create_model, load_checkpoint_folder, save_pretrained

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_server import FakeHub, point_hf_at  # noqa: E402

K = 3
TINY = {"num_classes": K, "neck_channels": 8, "head_channels": 6, "mlp_channels": [16, 8], "pos_dim": 8,
        "aux_channels": 4}
SIZES = [(67, 93), (33, 47), (64, 96)]  # odd, small odd, even; HRNet pads to multiples of 32 inside
FILES = {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so that a wrong fold shows. Eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def image(h: int, w: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


class ModelContract:
    backbone: ClassVar[str] = "efficientnet_lite0"
    architecture: ClassVar[str] = "fpn"
    config: ClassVar[dict] = {}

    @property
    def repo_id(self) -> str:
        return f"org/{type(self).__name__.lower()}"

    @pytest.fixture(scope="class")
    def model(self) -> SegmentationModel:
        torch.manual_seed(0)
        model = create_model(architecture=self.architecture, backbone=self.backbone, **{**TINY, **self.config})
        return randomise_norms(model)

    @pytest.fixture(scope="class")
    def saved(self, model, tmp_path_factory) -> Path:
        return save_pretrained(model, tmp_path_factory.mktemp("contract") / type(self).__name__)

    def test_config(self, model):
        assert (model.config.architecture, model.config.backbone) == (self.architecture, self.backbone)
        assert not model.training and model.config.num_classes == K

    @pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
    def test_forward_at_odd_sizes_batch_1_and_2(self, model, size):
        two = image(*size, batch=2)
        with torch.no_grad():
            both, first = model(two), model(two[:1])
        assert both.shape == (2, K, *size) and first.shape == (1, K, *size)
        assert torch.isfinite(both).all()
        # eval mode: samples do not mix; the batch changes only the float32 rounding (random ResNets reach ~500)
        assert (first - both[:1]).abs().max() <= 1e-5 * both.abs().max()

    def test_auxiliary_head(self, model):
        x = image(64, 96, batch=2)
        with torch.no_grad():
            logits, aux = model.forward_with_aux(x)
            plain = model(x)
            stride_16 = model.levels(x)[2].shape[-2:]  # 4 x 6; the reference ResNet's ceil-mode pooling: 5 x 7
        torch.testing.assert_close(logits, plain)
        assert aux.shape == (2, K, *stride_16)

    def test_folded_computes_the_unfolded_logits(self, model):
        x = image(64, 96, seed=1)
        folded = copy.deepcopy(model)
        with torch.no_grad():
            want = model(x)
            folded.fold_batchnorm()
            got = folded(x)
        # fp32 rounding of the folded weights: within 1e-5 of the largest |logit| (random ResNets reach ~500)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
        with pytest.raises(RuntimeError, match="folded"):
            folded.train()

    def test_save_and_load(self, model, saved):
        assert saved.name == type(self).__name__  # save_pretrained returns the folder
        assert set(os.listdir(saved)) == FILES
        loaded = load_checkpoint_folder(saved)
        assert not loaded.training and loaded.config.to_dict() == model.config.to_dict()
        self.assert_same_model(loaded, model)

    def test_loopback_hub_round_trip(self, model, saved, tmp_path, monkeypatch):
        with FakeHub() as hub:
            point_hf_at(monkeypatch, hub.url, tmp_path / "hf-cache")
            sha = push_to_hub(saved, self.repo_id)
            self.assert_same_model(load_model(self.repo_id, revision=sha), model)

    def test_inspect_is_what_forward_computes(self, model):
        x = image(64, 96, batch=2, seed=2)  # divisible by 32: levels(x) sees what forward sees
        with torch.no_grad():
            levels = model.levels(x)
            inside = model.inspect(levels)
            grid = model.head_logits(levels)
            logits = model(x)
        h, w = levels[0].shape[-2:]
        assert inside.level_norms.shape == (2, len(levels), h, w) and (inside.level_norms >= 0).all()
        assert inside.features.shape[:1] + inside.features.shape[2:] == (2, h, w)
        assert inside.logits.shape == (2, K, h, w)
        scale = logits.abs().max()  # float32 rounding relative to the largest logit (random ResNets reach ~500)
        assert (inside.logits - grid).abs().max() <= 1e-5 * scale
        assert (model.upsample_logits(inside.logits, x.shape[-2:]) - logits).abs().max() <= 1e-5 * scale

    @staticmethod
    def assert_same_model(loaded: SegmentationModel, model: SegmentationModel) -> None:
        original, restored = model.state_dict(), loaded.state_dict()
        assert original.keys() == restored.keys()
        for key, tensor in original.items():
            assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
        x = image(*SIZES[0])
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
