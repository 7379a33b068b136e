"""Converting BatchNorm for multi-process training (one process here; tests/training/test_ddp_gloo.py runs two)."""

from __future__ import annotations

import copy

import torch
from timm.layers import BatchNormAct2d, SyncBatchNormAct
from torch import nn

from ifa.distributed import CPUSyncBatchNorm, CPUSyncBatchNormAct, convert_sync_batchnorm


def block() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.ReLU6), nn.Conv2d(4, 4, 1),
                         nn.BatchNorm2d(4))


def test_cpu_conversion_keeps_timm_activations_and_state_keys():
    original, x = block(), torch.randn(2, 3, 5, 5) * 4
    converted = convert_sync_batchnorm(copy.deepcopy(original), "cpu")
    assert [type(m) for m in converted] == [nn.Conv2d, CPUSyncBatchNormAct, nn.Conv2d, CPUSyncBatchNorm]
    assert converted.state_dict().keys() == original.state_dict().keys()  # last.pt and exports unchanged
    for mode in ("train", "eval"):  # without a process group: plain BatchNorm (+ ReLU6)
        getattr(original, mode)()
        getattr(converted, mode)()
        torch.testing.assert_close(converted(x), original(x))
    assert_close_state(converted, original)  # running statistics updated alike


def assert_close_state(a: nn.Module, b: nn.Module) -> None:
    for (key, value), other in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(value, other, msg=key)


def test_gpu_conversion_uses_torch_sync_batchnorm_with_activations():
    converted = convert_sync_batchnorm(block(), "cuda")  # conversion only: no GPU needed
    assert type(converted[1]) is SyncBatchNormAct and isinstance(converted[1].act, nn.ReLU6)
    assert type(converted[3]) is nn.SyncBatchNorm


def test_torch_converter_would_drop_the_activation():
    """Why ifa.distributed converts: torch's own converter turns timm's BatchNorm + ReLU6 into a SyncBatchNorm
    that keeps `act` as a child module but never calls it."""
    original, h = block()[1].train(), torch.randn(2, 4, 5, 5) * 4
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(copy.deepcopy(original)))[0]
    assert type(converted) is nn.SyncBatchNorm
    out = converted(h)  # one process: BatchNorm only
    assert (out < 0).any() and (original(h) >= 0).all()
    torch.testing.assert_close(out, nn.functional.batch_norm(h, None, None, original.weight, original.bias, True))


def test_conversion_shares_parameters_and_buffers():
    model = block()
    bn = model[1]
    converted = convert_sync_batchnorm(model, "cpu")[1]
    assert converted is not bn and converted.weight is bn.weight and converted.running_mean is bn.running_mean
