"""Fold eval-mode BatchNorm into the convolution that feeds it (inference only, in place).

A BatchNorm in eval mode is an affine map per channel: y = (x - mean) / sqrt(var + eps) * gamma + beta.
When x is a convolution's output, the map folds into that convolution's weight and bias
(`torch.nn.utils.fusion.fuse_conv_bn_weights`) and the BatchNorm becomes an identity (timm's
BatchNormAct2d keeps its activation). The pairs are found by running the module once: a BatchNorm
folds into the Conv2d whose output tensor, unchanged, is its input (a convolution output that
something else reads as well would be folded wrongly: the models here have none, tests compare
outputs). The model then computes the same function up to float rounding (fp32: ~1e-6 relative)
with one elementwise pass fewer per pair, but it can no longer be trained (its BatchNorm is gone).

`fuse_activations` then does the same for a ReLU or ReLU6 that reads a convolution's output: on the CPU the pair
runs as oneDNN's fused convolution (`mkldnn._convolution_pointwise`, the activation applied as the output is
written: one pass over the activations fewer), with the weights cast once per autocast dtype instead of at every
call; elsewhere, convolution then activation as before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _conv_fed_pairs(model: nn.Module, run: Callable[[], object], kinds: tuple[type, ...],
                    skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(conv name, module name) for every module of `kinds` whose input, while `run()` executes, is the unchanged
    output of a Conv2d of `model`, both called once (module names under a prefix in `skip` excluded)."""
    # id -> (output, its version counter, conv name); the output is kept alive so that its id is not reused
    produced: dict[int, tuple[torch.Tensor, int, str]] = {}
    pairs: dict[str, str] = {}
    calls: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def after_conv(module, _inputs, output):
        calls[names[module]] = calls.get(names[module], 0) + 1
        produced[id(output)] = output, output._version, names[module]

    def before_consumer(module, inputs):
        calls[names[module]] = calls.get(names[module], 0) + 1
        output, version, conv = produced.get(id(inputs[0]), (None, None, None))
        if output is inputs[0] and output._version == version:  # not changed in place (e.g. a residual += )
            pairs.setdefault(names[module], conv)

    hooks = []
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, kinds):
            hooks.append(module.register_forward_pre_hook(before_consumer))
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return [(conv, other) for other, conv in pairs.items() if calls[conv] == calls[other] == 1]


def conv_bn_pairs(model: nn.Module, run: Callable[[], object], skip: tuple[str, ...] = ()
                  ) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) for every BatchNorm2d whose input, while `run()` executes, is the output of a
    Conv2d of `model` (module names under a prefix in `skip` excluded)."""
    return _conv_fed_pairs(model, run, (nn.BatchNorm2d,), skip)


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
        model.set_submodule(bn_name, _after_norm(bn))
    return len(pairs)


# activation module -> oneDNN post-op name and its scalars
POST_OPS = {nn.ReLU: ("relu", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}
FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class ConvAct2d(nn.Module):
    """A convolution and the ReLU / ReLU6 after it (inference only). On the CPU in float32 or bfloat16 (autocast
    included) one oneDNN call computes both; anywhere else `act(conv(x))`."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv, self.act = conv, act
        self.post_op, self.scalars = POST_OPS[type(act)]
        # dtype -> (the weight's storage and version when cast, weight, bias)
        self._cast: dict[torch.dtype, tuple[tuple[int, int], torch.Tensor, torch.Tensor | None]] = {}

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.conv.weight, self.conv.bias
        if weight.dtype == dtype:
            return weight, bias
        source = weight.data_ptr(), weight._version
        cast_from, w, b = self._cast.get(dtype, (None, None, None))
        if cast_from != source:  # cast once per dtype (autocast would cast at every call), again if changed
            w, b = weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype)
            self._cast[dtype] = source, w, b
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if not FUSED_CONV or x.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) \
                or torch.is_grad_enabled() and self.conv.weight.requires_grad:
            return self.act(self.conv(x))
        weight, bias = self._weights(dtype)
        c = self.conv
        return torch.ops.mkldnn._convolution_pointwise(x.to(dtype), weight, bias, c.padding, c.stride, c.dilation,
                                                       c.groups, self.post_op, self.scalars, None)


def fuse_activations(model: nn.Module, run: Callable[[], object], skip: tuple[str, ...] = ()) -> int:
    """Replace every (Conv2d, ReLU / ReLU6) pair in which the activation reads the convolution's unchanged output
    while `run()` executes (both called once; zero padding given as numbers) by a ConvAct2d and an identity, in
    place; the model must be in eval mode. Returns the number of fused pairs."""
    if model.training:
        raise ValueError("fuse activations into convolutions in eval mode only")
    fused = 0
    for conv_name, act_name in _conv_fed_pairs(model, run, tuple(POST_OPS), skip):
        conv, act = model.get_submodule(conv_name), model.get_submodule(act_name)
        if type(act) not in POST_OPS or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            continue
        model.set_submodule(conv_name, ConvAct2d(conv, act))
        model.set_submodule(act_name, nn.Identity())
        fused += 1
    return fused
