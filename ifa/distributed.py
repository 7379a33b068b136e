"""One process or many under torchrun: rank, world size, device, process group; BatchNorm synchronised
across processes on GPU (torch's SyncBatchNorm) and on CPU (gloo, CPUSyncBatchNorm)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from timm.layers import BatchNormAct2d
from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm
from torch import nn


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def single(cls, device: str | torch.device | None = None) -> DistributedContext:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(0, 1, torch.device(device))

    @classmethod
    def from_env(cls, device: str | None = None) -> DistributedContext:
        """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls.single(device)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(local_rank)
            target = torch.device("cuda", local_rank)
        else:
            target = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(rank, world_size, target)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# --- synchronised BatchNorm on any device -----------------------------------------------------------
# torch.nn.SyncBatchNorm needs an accelerator: on CPU tensors its forward raises ValueError, its
# kernel (aten::batch_norm_stats) has no CPU implementation, and DistributedDataParallel refuses a
# CPU module that contains one. CPUSyncBatchNorm below does the same job with gloo all-reduces.


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are reduced over all processes (any device, e.g. gloo on CPU).

    Input (B, C, ...). In training, with a process group of more than one process, the mean and
    the (biased) variance of each channel are those of the batch concatenated over all processes,
    obtained by two differentiable all-reduces (sums, then centred squares), so outputs, gradients
    and running statistics equal those of BatchNorm on the whole batch. Otherwise (eval, one
    process) it is plain BatchNorm. State-dict keys are BatchNorm's.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (B, C, ...), got {input.dim()}D")

    def _synchronised(self) -> bool:
        return (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group or dist.group.WORLD) > 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self._synchronised():
            return super().forward(x)
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, x.dim())]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        sums = dist_nn.all_reduce(torch.cat([x.sum(dims), count]), group=group)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = dist_nn.all_reduce(centred.square().sum(dims), group=group) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1), factor)
        return out


class CPUSyncBatchNormAct(CPUSyncBatchNorm):
    """timm's BatchNormAct2d (BatchNorm, then `drop` and `act`) with CPUSyncBatchNorm statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str, process_group=None) -> nn.Module:
    """Every BatchNorm layer made synchronous across processes, sharing the original parameters and buffers.

    CUDA: torch's SyncBatchNorm through timm's converter. CPU: CPUSyncBatchNorm. Either way timm's
    BatchNormAct2d layers (EfficientNet's BatchNorm + ReLU6) keep their activation, which
    torch.nn.SyncBatchNorm.convert_sync_batchnorm would silently drop.
    """
    if torch.device(device).type != "cpu":
        return timm_convert_sync_batchnorm(module, process_group)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        cls = CPUSyncBatchNormAct if isinstance(module, BatchNormAct2d) else CPUSyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  process_group)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device, process_group))
    return out


def all_reduce_mean(value: float, ctx: DistributedContext) -> float:
    """The mean of a number over all processes (the number itself in a single process)."""
    if ctx.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(total)
    return float(total.item()) / ctx.world_size
