"""Evaluate a model on a dataset split: per-class IoU, mIoU, mAcc, aAcc (also under torchrun).

python -m ifa.evaluate --model M --dataset D --root DIR --split S [--scales ...] [--flip]
                       [--mode whole|slide] [--json OUT] [--compare M2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .data.datasets import DatasetError, SegmentationDataset, build_dataset
from .distributed import DistributedContext
from .inference import Predictor
from .metrics import confusion_matrix, summarize


def evaluate(predictor: Predictor, dataset: SegmentationDataset, limit: int | None = None,
             ctx: DistributedContext | None = None, progress: bool = True) -> np.ndarray:
    """Confusion matrix (K, K) over the dataset (rows = ground truth), summed across ranks."""
    ctx = ctx or DistributedContext.single()
    num_classes = predictor.config.num_classes
    if dataset.info.num_classes != num_classes:
        raise ValueError(f"the model predicts {num_classes} classes but {dataset.name} has {dataset.info.num_classes}")
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))[ctx.rank::ctx.world_size]
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for index in tqdm(indices, desc="evaluate", disable=not (progress and ctx.is_main), leave=False):
        image, label = dataset[index]
        cm += confusion_matrix(predictor.predict(image).labels, label, num_classes, ignore_index=255)
    if ctx.world_size > 1:
        total = torch.from_numpy(cm).to(ctx.device)
        dist.all_reduce(total)
        cm = total.cpu().numpy()
    return cm


def format_table(results: dict[str, dict], class_names: list[str]) -> str:
    """Per-class IoU of one or more models side by side (percent), with the difference for two."""
    names = list(results)
    header = f"{'class':<16}" + "".join(f"{n[-14:]:>15}" for n in names) + ("       diff" if len(names) == 2 else "")
    lines = [header, "-" * len(header)]

    def fmt(v):
        return f"{v:15.2f}" if v is not None else f"{'-':>15}"

    for cls in class_names:
        values = [results[n]["per_class"][cls] for n in names]
        row = f"{cls[:16]:<16}" + "".join(fmt(v) for v in values)
        if len(names) == 2 and None not in values:
            row += f"{values[1] - values[0]:+11.2f}"
        lines.append(row)
    lines.append("-" * len(header))
    for key in ("mIoU", "mAcc", "aAcc"):
        values = [results[n][key] for n in names]
        row = f"{key:<16}" + "".join(fmt(v) for v in values)
        if len(names) == 2:
            row += f"{values[1] - values[0]:+11.2f}"
        lines.append(row)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifa.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision (commit sha, branch or tag)")
    p.add_argument("--compare", default=None, help="a second model to evaluate side by side")
    p.add_argument("--compare-revision", default=None)
    p.add_argument("--dataset", required=True,
                   help="camvid, cityscapes, ade20k, pascal_context, pascal_context_60, kitti (Cityscapes labelIds; "
                        "scored in a CamVid model's classes through ifa.data.label_sets' mapping)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="val")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--flip", action="store_true")
    p.add_argument("--mode", choices=["whole", "slide", "reference"], default="whole",
                   help="whole image, sliding window, or the reference code's protocol (see ifa.inference.Predictor)")
    p.add_argument("--window", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="window of --mode slide (default 512 512) or reference (default 769 769)")
    p.add_argument("--long-side", type=int, default=2048,
                   help="--mode reference: the long side the image is resized to at scale 1 (default 2048)")
    p.add_argument("--ifa-resolution", choices=["stride4", "full"], default="stride4")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    return p


def run(args: argparse.Namespace) -> dict[str, dict]:
    from .hub import load_model

    ctx = DistributedContext.from_env(args.device)
    models = {}
    for spec, revision in ((args.model, args.revision), (args.compare, args.compare_revision)):
        if spec is not None:
            models[spec if spec not in models else f"{spec} (2)"] = load_model(spec, revision=revision)
    classes = {model.config.dataset for model in models.values() if model.config.dataset}
    if len(classes) > 1:
        raise ValueError(f"the models predict different class sets ({', '.join(sorted(classes))})")
    # A model's own class set decides how the labels are read: KITTI's Cityscapes labels for a CamVid model
    # go through ifa.data.label_sets' written mapping.
    dataset = build_dataset(args.dataset, args.root, args.split, classes=next(iter(classes), None))
    results = {}
    for key, model in models.items():
        predictor = Predictor(model, device=ctx.device, precision=args.precision, mode=args.mode,
                              window=tuple(args.window) if args.window else None, long_side=args.long_side,
                              scales=tuple(args.scales), flip=args.flip,
                              ifa_resolution=args.ifa_resolution if model.is_ifa else "stride4")
        cm = evaluate(predictor, dataset, limit=args.limit, ctx=ctx)
        results[key] = summarize(cm, list(dataset.info.class_names))
    if ctx.is_main:
        print(format_table(results, list(dataset.info.class_names)))
        if args.json:
            payload = results[args.model] if len(results) == 1 else {"models": results}
            payload = {**payload, "dataset": args.dataset, "split": args.split, "images": len(dataset),
                       "label_set": dataset.label_set, "classes": dataset.info.name,
                       "scales": args.scales, "flip": args.flip, "mode": args.mode}
            write_json(args.json, payload)
    ctx.close()
    return results


def write_json(path: str | Path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2))


def run_cli(run_fn, parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse argv, call run_fn(args); a user error prints one line and returns 2."""
    args = parser.parse_args(argv)
    from .hub import HubError
    from .models.checkpoint import CheckpointError

    try:
        run_fn(args)
    except (DatasetError, CheckpointError, HubError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
