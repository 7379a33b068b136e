"""Calibrate each model's in-domain rule: its confidence (ifa.domain) on its val split and on clearly non-street
pictures, the threshold, and the rates; recorded in the model card's `ifa.domain` block (the app reads it). An IFA
model is measured at the output resolution the app starts it on (its card's `ifa.resolution` record).

python -m tools.calibrate_domain checkpoints/camvid-effl0-fpn checkpoints/camvid-effl0-ifa-lateral-wide ...
    [--root ../shared/data/camvid] [--split val] [--max-false-alarm 0.02] [--dry-run] [--json out.json]

The non-street set comes from packages already installed (no download): scikit-image's sample pictures and
matplotlib's: people (an astronaut, a cameraman, a portrait), a cat, a horse, objects (coffee, a rocket, coins, a
gift, a clock, a logo, an indoor motorcycle), textures, text, microscopy and retina images, the moon and a deep-sky
field (22 pictures). Each is resized so its long side is 480 px, as CamVid's frames. (The ADE20K samples are outdoor
scenes, one a street: not used.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ifa.cards import resolution_record
from ifa.data.datasets import build_dataset
from ifa.domain import DomainReference, calibrate, confidence
from ifa.hub import load_model
from ifa.inference import Predictor

SKIMAGE = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "horse", "brick", "grass", "gravel",
           "page", "text", "immunohistochemistry", "cell", "retina", "microaneurysms", "moon", "hubble_deep_field",
           "logo", "clock")
MATPLOTLIB = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")


def non_street_pictures() -> dict[str, np.ndarray]:
    """{name: uint8 RGB (H, W, 3)} of the non-street set, long side 480 px."""
    import matplotlib
    import skimage.data

    pictures = {}
    for name in SKIMAGE:
        pictures[f"skimage {name}"] = getattr(skimage.data, name)()
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    for name in MATPLOTLIB:
        pictures[f"matplotlib {name}"] = np.asarray(Image.open(folder / name))
    pictures["skimage stereo_motorcycle (indoor)"] = skimage.data.stereo_motorcycle()[0]
    out = {}
    for name, array in pictures.items():
        img = Image.fromarray(array.astype(np.uint8) if array.dtype != bool else array.astype(np.uint8) * 255)
        img = img.convert("RGB")
        scale = 480 / max(img.size)
        out[name] = np.asarray(img.resize((max(32, round(img.width * scale)), max(32, round(img.height * scale))),
                                          Image.Resampling.LANCZOS))
    return out


def image_confidence(predictor: Predictor, image: np.ndarray) -> float:
    """ifa.domain.confidence of one image at its own size, single scale."""
    return confidence(predictor.probabilities(predictor.preprocess(image))[0], logits=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="checkpoint folders")
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-false-alarm", type=float, default=0.02)
    parser.add_argument("--dry-run", action="store_true", help="print, do not write the cards")
    parser.add_argument("--json", help="also write every confidence here")
    args = parser.parse_args(argv)
    val_set = build_dataset(args.dataset, args.root, args.split)
    outside = non_street_pictures()
    report = {}
    for folder in args.models:
        # At the resolution the app starts the model on (its card's record; the stride-4 grid when none).
        record = resolution_record(folder) if Path(folder).is_dir() else None
        predictor = Predictor(load_model(folder), device="cpu", precision="fp32",
                              ifa_resolution=record["best"] if record else "stride4")
        val = [image_confidence(predictor, val_set[i][0]) for i in tqdm(range(len(val_set)), desc=folder)]
        out = {name: image_confidence(predictor, image) for name, image in outside.items()}
        reference = calibrate(val, list(out.values()), args.max_false_alarm)
        report[folder] = {"reference": reference.to_record(), "val": val, "outside": out}
        print(f"{folder}: threshold {reference.threshold:.4f}; val median {reference.val_median:.4f}, "
              f"p05 {reference.val_p05:.4f}, false alarms {reference.val_false_alarm_percent:.1f}% of "
              f"{reference.val_images}; non-street missed {reference.outside_missed_percent:.1f}% of "
              f"{reference.outside_images}")
        for name, value in sorted(out.items(), key=lambda kv: kv[1]):
            print(f"    {value:.4f} {'caught' if value < reference.threshold else 'MISSED'}  {name}")
        if not args.dry_run:
            write_reference(folder, reference)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def write_reference(folder: str | Path, reference: DomainReference) -> None:
    """Record the calibration in the card's `ifa.domain` block (the rest of the card unchanged)."""
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    card = ModelCard.load(path)
    records = dict(getattr(card.data, "ifa", None) or {})
    records["domain"] = reference.to_record()
    card.data.ifa = records
    card.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
