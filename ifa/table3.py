"""The paper's Table 3 for one model: mIoU with single-scale, multi-scale, flip and multi-scale + flip testing.

python -m ifa.table3 --model M --dataset D --root DIR --split S [--limit N] [--json OUT]
                     [--scales 0.5 0.75 1.0 1.25 1.5 2.0] [--mode whole|slide] [--window H W]

Each row is one `ifa.evaluate.evaluate` pass with its own Predictor (also under torchrun: the
confusion matrices are summed over ranks). The paper (ResNet-101 FPN + IFA, Cityscapes val,
sliding 769x769 windows): single scale 79.49, multi-scale 80.61, flip 80.29, multi-scale + flip 81.02.
"""

from __future__ import annotations

import argparse
import sys

from .data.datasets import build_dataset
from .distributed import DistributedContext
from .evaluate import evaluate, run_cli, write_json
from .inference import Predictor
from .metrics import summarize

PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
PAPER_R101_IFA_CITYSCAPES = {"single scale": 79.49, "multi-scale": 80.61, "flip": 80.29, "multi-scale + flip": 81.02}


def settings(scales: tuple[float, ...]) -> dict[str, tuple[tuple[float, ...], bool]]:
    """Row name -> (scales, flip), in the paper's order."""
    return {"single scale": ((1.0,), False), "multi-scale": (tuple(scales), False), "flip": ((1.0,), True),
            "multi-scale + flip": (tuple(scales), True)}


def table3(model, dataset, scales: tuple[float, ...] = PAPER_SCALES, limit: int | None = None,
           ctx: DistributedContext | None = None, progress: bool = True, **predictor_kwargs) -> dict[str, dict]:
    """{row: summarize(...) of the confusion matrix} for the four test-time settings.

    predictor_kwargs (device, precision, mode, window, stride, ifa_resolution) go to every Predictor.
    """
    ctx = ctx or DistributedContext.single(predictor_kwargs.pop("device", None))
    predictor_kwargs.setdefault("device", ctx.device)
    names = list(dataset.info.class_names)
    rows = {}
    for row, (row_scales, flip) in settings(scales).items():
        predictor = Predictor(model, scales=row_scales, flip=flip, **predictor_kwargs)
        rows[row] = summarize(evaluate(predictor, dataset, limit=limit, ctx=ctx, progress=progress), names)
    return rows


def format_table3(rows: dict[str, dict], reference: dict[str, float] | None = None) -> str:
    """One line per setting: mIoU, mAcc, aAcc (percent) and, when given, the paper's mIoU."""
    header = f"{'evaluation':<20}{'mIoU':>8}{'mAcc':>8}{'aAcc':>8}" + (f"{'paper mIoU':>12}" if reference else "")
    lines = [header, "-" * len(header)]
    for row, result in rows.items():
        line = f"{row:<20}" + "".join(f"{result[k]:8.2f}" for k in ("mIoU", "mAcc", "aAcc"))
        if reference:
            line += f"{reference[row]:12.2f}" if row in reference else f"{'-':>12}"
        lines.append(line)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifa.table3", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder or Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision (commit sha, branch or tag)")
    p.add_argument("--dataset", required=True, help="camvid, cityscapes, ade20k, pascal_context, pascal_context_60")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="val")
    p.add_argument("--scales", type=float, nargs="+", default=list(PAPER_SCALES),
                   help="scales of the multi-scale rows (default: the paper's)")
    p.add_argument("--mode", choices=["whole", "slide", "reference"], default="whole",
                   help="whole image, sliding window, or the reference code's protocol (long side 2048 x scale, "
                        "769x769 windows; see ifa.inference.Predictor)")
    p.add_argument("--window", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="window of --mode slide (default 512 512) or reference (default 769 769)")
    p.add_argument("--long-side", type=int, default=2048,
                   help="--mode reference: the long side the image is resized to at scale 1 (default 2048)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", default=None, help="write {setting: {mIoU, mAcc, aAcc, per_class}} here")
    return p


def run(args: argparse.Namespace) -> dict[str, dict]:
    from .hub import load_model

    ctx = DistributedContext.from_env(args.device)
    dataset = build_dataset(args.dataset, args.root, args.split)
    model = load_model(args.model, revision=args.revision, num_classes=dataset.info.num_classes)
    rows = table3(model, dataset, scales=tuple(args.scales), limit=args.limit, ctx=ctx, precision=args.precision,
                  mode=args.mode, window=tuple(args.window) if args.window else None, long_side=args.long_side)
    if ctx.is_main:
        reference = PAPER_R101_IFA_CITYSCAPES if args.dataset == "cityscapes" else None
        print(format_table3(rows, reference))
        if reference:
            print("paper column: ResNet-101 FPN + IFA on Cityscapes val (Table 3)")
        if args.json:
            payload = {"model": args.model, "dataset": args.dataset, "split": args.split, "scales": args.scales,
                       "mode": args.mode, "window": args.window, "limit": args.limit, "rows": rows}
            write_json(args.json, payload)
    ctx.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
