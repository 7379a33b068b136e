"""Does an IFA model use its offsets? Val mIoU as trained and with every level's offset r fed to its
position encoding as 0: each level then contributes its cell's feature and the constant PE(0), so the
coarse levels act as nearest-cell upsampling and the implicit alignment is switched off.

python -m tools.offset_ablation checkpoints/camvid-effl0-ifa [--root ../shared/data/camvid] [--limit N]

Prints both mIoUs, the per-class IoU change and the share of scored pixels whose label changes.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm import tqdm

from ifa.data.datasets import build_dataset
from ifa.hub import load_model
from ifa.inference import Predictor
from ifa.metrics import confusion_matrix, summarize
from ifa.models.segmentor import SegmentationModel


def ablate(model: SegmentationModel, dataset, limit: int | None = None) -> dict:
    """mIoU / per-class IoU as trained and with offsets zeroed, and the share of changed labels (percent)."""
    k = model.config.num_classes
    predictor = Predictor(model, device="cpu")
    cms = {"as_trained": np.zeros((k, k), np.int64), "offsets_zeroed": np.zeros((k, k), np.int64)}
    changed = scored = 0
    for index in tqdm(range(len(dataset) if limit is None else min(limit, len(dataset))), desc="ablate"):
        image, label = dataset[index]
        trained = predictor.predict(image).labels
        with model.offsets_zeroed():
            zeroed = predictor.predict(image).labels
        cms["as_trained"] += confusion_matrix(trained, label, k, ignore_index=255)
        cms["offsets_zeroed"] += confusion_matrix(zeroed, label, k, ignore_index=255)
        valid = label != 255
        changed += int((trained != zeroed)[valid].sum())
        scored += int(valid.sum())
    names = list(dataset.info.class_names)
    result = {name: summarize(cm, names) for name, cm in cms.items()}
    result["changed_pixels_percent"] = 100.0 * changed / max(scored, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="IFA checkpoint folder or Hub repo id")
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    if not model.is_ifa:
        parser.error(f"{args.model} is a Semantic FPN; the offset ablation needs an IFA model")
    result = ablate(model, build_dataset(args.dataset, args.root, args.split), args.limit)
    a, z = result["as_trained"], result["offsets_zeroed"]
    print(f"mIoU as trained {a['mIoU']:.2f}, offsets zeroed {z['mIoU']:.2f} ({z['mIoU'] - a['mIoU']:+.2f}); "
          f"labels changed on {result['changed_pixels_percent']:.2f}% of scored pixels")
    for name, iou in a["per_class"].items():
        if iou is not None and z["per_class"][name] is not None:
            print(f"  {name:<12} {iou:6.2f} -> {z['per_class'][name]:6.2f} ({z['per_class'][name] - iou:+.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
