"""One all-reduce across the processes torchrun started, on the backend ifa.distributed picks for the device
(NCCL on CUDA, gloo on the CPU). tools.device_check runs it under `torchrun --nproc_per_node 1`: with one process
ifa.train (like ifa.distributed.DistributedContext) never creates a process group, so this is what proves that
the backend starts and reduces on the device.

torchrun --standalone --nproc_per_node N -m tools.collective_probe OUT.json [--device cuda|cpu]

Rank 0 writes {"backend", "world_size", "device", "sum", "expected", "ok"}: the sum over ranks of (rank + 1).
Imports torch alone (it starts in seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def probe(device: torch.device) -> dict:
    """All-reduce of (rank + 1) over the torchrun group on `device`; the result and what it should be."""
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        value = torch.full((8,), float(rank + 1), device=device)
        dist.all_reduce(value)
        total = float(value[0].item())
    finally:
        dist.destroy_process_group()
    expected = world_size * (world_size + 1) / 2
    return {"backend": backend, "world_size": world_size, "rank": rank, "device": str(device), "sum": total,
            "expected": expected, "ok": total == expected}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.collective_probe", description=__doc__.split("\n")[0])
    p.add_argument("out", help="JSON file rank 0 writes")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: CUDA when present")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = probe(device)
    if result["rank"] == 0:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
