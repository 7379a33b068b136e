"""Fold eval-mode BatchNorm into the convolution that feeds it (inference only, in place).

A BatchNorm in eval mode is an affine map per channel: y = (x - mean) / sqrt(var + eps) * gamma + beta.
When x is a convolution's output, the map folds into that convolution's weight and bias
(`torch.nn.utils.fusion.fuse_conv_bn_weights`) and the BatchNorm becomes an identity (timm's
BatchNormAct2d keeps its activation). The pairs are found by running the module once: a BatchNorm
folds into the Conv2d whose output tensor, unchanged, is its input (a convolution output that
something else reads as well would be folded wrongly: the models here have none, tests compare
outputs). The model then computes the same function up to float rounding (fp32: ~1e-6 relative)
with one elementwise pass fewer per pair, but it can no longer be trained (its BatchNorm is gone).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def conv_bn_pairs(model: nn.Module, run: Callable[[], object], skip: tuple[str, ...] = ()
                  ) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for every BatchNorm2d whose input, while `run()` executes, is the output of a
    Conv2d of `model` (module names under a prefix in `skip` excluded)."""
    # id -> (output, its version counter, conv name); the output is kept alive so that its id is not reused
    produced: dict[int, tuple[torch.Tensor, int, str]] = {}
    pairs: dict[str, str] = {}
    names = {m: n for n, m in model.named_modules()}

    def after_conv(module, _inputs, output):
        produced[id(output)] = output, output._version, names[module]

    def before_bn(module, inputs):
        output, version, conv = produced.get(id(inputs[0]), (None, None, None))
        if output is inputs[0] and output._version == version:  # not changed in place (e.g. a residual += )
            pairs.setdefault(names[module], conv)

    hooks = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return [(conv, bn) for bn, conv in pairs.items()]


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of a folded BatchNorm: its activation for timm's BatchNormAct2d, else nothing."""
    return nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()


def fold_batchnorm(model: nn.Module, run: Callable[[], object], skip: tuple[str, ...] = ()) -> int:
    """Fold every BatchNorm found by `conv_bn_pairs(model, run, skip)` into its convolution, in place; the model
    must be in eval mode. Returns the number of folded pairs."""
    if model.training:
        raise ValueError("fold BatchNorm into convolutions in eval mode only (the running statistics are folded)")
    pairs = conv_bn_pairs(model, run, skip)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        with torch.no_grad():
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = weight, bias
        parent, _, child = bn_name.rpartition(".")
        setattr(model.get_submodule(parent), child, _after_norm(bn))
    return len(pairs)
