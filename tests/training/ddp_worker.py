"""Run by test_ddp_gloo.py under torchrun (2 CPU processes, gloo): checks CPUSyncBatchNorm against
BatchNorm on the whole batch, trains a tiny recipe with ifa.train.train, saves this rank's weights.

python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/ddp_worker.py RECIPE.yaml OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ifa.distributed import DistributedContext, convert_sync_batchnorm
from ifa.train import load_config, train


def sync_batchnorm_errors(ctx: DistributedContext) -> dict[str, float]:
    """Max abs differences between CPUSyncBatchNorm on this rank's half of a batch and BatchNorm on all of it."""
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(2 * ctx.world_size, 3, 5, 6, generator=gen) * 3 + 1
    grad_all = torch.randn(x_all.shape, generator=gen)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=gen)
        reference.bias.uniform_(-1, 1, generator=gen)
    synced = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), ctx.device)
    synced.load_state_dict({f"0.{k}": v for k, v in reference.state_dict().items()})
    mine = slice(2 * ctx.rank, 2 * ctx.rank + 2)
    x = x_all[mine].clone().requires_grad_()
    y = synced(x)
    (y * grad_all[mine]).sum().backward()
    x_ref = x_all.clone().requires_grad_()
    y_ref = reference(x_ref)
    (y_ref * grad_all).sum().backward()
    weight_grad = synced[0].weight.grad.clone()
    dist.all_reduce(weight_grad)  # each rank holds the gradient of its own half
    layer = synced[0]
    return {"type": type(layer).__name__,
            "output": (y - y_ref[mine]).abs().max().item(),
            "input_grad": (x.grad - x_ref.grad[mine]).abs().max().item(),
            "weight_grad": (weight_grad - reference.weight.grad).abs().max().item(),
            "running_mean": (layer.running_mean - reference.running_mean).abs().max().item(),
            "running_var": (layer.running_var - reference.running_var).abs().max().item()}


def main(recipe: str, out: str) -> None:
    torch.set_num_threads(1)
    ctx = DistributedContext.from_env("cpu")  # initialises the gloo group; train() reuses it
    report = {"rank": ctx.rank, "world_size": ctx.world_size, "sync_bn": sync_batchnorm_errors(ctx)}
    result = train(load_config(recipe), device="cpu")
    report["bn_types"] = sorted({type(m).__name__ for m in result["model"].modules()
                                 if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    torch.save(result["model"].state_dict(), Path(out) / f"rank{ctx.rank}.pt")
    (Path(out) / f"rank{ctx.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:])
