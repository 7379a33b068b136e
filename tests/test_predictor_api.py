"""ifa.Predictor, the library's entry point: exported by `ifa`, and it uses the caller's model in place (its
docstring says so; a deep copy keeps the original as it was)."""

from __future__ import annotations

import copy

import numpy as np
import torch

import ifa
from ifa.inference import Predictor


def tiny():
    torch.manual_seed(0)
    return ifa.create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                            mlp_channels=[8], pos_dim=4)


def conv_weight(model) -> torch.Tensor:
    return next(p for p in model.parameters() if p.dim() == 4)


def test_ifa_exports_predictor():
    assert ifa.Predictor is Predictor and "Predictor" in ifa.__all__ and "Prediction" in ifa.__all__


def test_predictor_uses_the_callers_model_in_place():
    model = tiny().train()
    assert not conv_weight(model).is_contiguous(memory_format=torch.channels_last)
    predictor = Predictor(model, device="cpu", channels_last=True)
    assert predictor.model is model  # not a copy
    assert not model.training and conv_weight(model).is_contiguous(memory_format=torch.channels_last)
    assert "used in place, not copied" in Predictor.__doc__


def test_a_copy_keeps_the_callers_model_as_it_was():
    model = tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(copy.deepcopy(model), device="cpu", channels_last=True)
    pred = predictor.predict(np.zeros((20, 24, 3), dtype=np.uint8))
    assert pred.labels.shape == (20, 24)
    assert model.training and not conv_weight(model).is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
