"""Is an IFA model as good queried at every pixel as on its stride-4 grid? Val scores at both resolutions.

python -m tools.resolution_study checkpoints/camvid-effl0-ifa-lateral-wide [--root ../shared/data/camvid]
    [--resolutions stride4 full] [--zeroed] [--phases] [--centres] [--limit N] [--json out.json]
    [--record [--from-json out.json]]

For each resolution (`stride4`: the head on the stride-4 grid, bilinearly upsampled, as trained; `full`: the head
queried at every input pixel) it prints the val mIoU and aAcc (single scale, `ifa.metrics.summarize`) and the
pixel accuracy and mIoU within 1, 2, 4 and 8 px of a ground-truth boundary (`ifa.metrics.trimap_confusion_matrices`
summed over the images, read with `ifa.metrics.band_scores`); with --zeroed also the stride-4 mIoU with every
offset fed as 0 and the share of scored pixels whose label changes; with --phases, where within a stride-4 cell
the every-pixel query loses: the full-resolution log-probabilities kept at one pixel of each 4x4 cell (phase s: rows
and columns 4i + s) and linearly interpolated back to every pixel, one mIoU per phase (phases 1 and 2 sit half a
pixel either side of the cell centre the stride-4 grid reads). Every result also carries each resolution's per-class
IoU. A Semantic FPN gets the stride-4 row only, and with --phases the same placements of its own stride-4 logits
(each cell's logit taken to sit at pixel 4i + s instead of the cell centre 4i + 1.5): the baseline's side of the knob.
With --centres it first measures where each level's features are centred (`feature_centres`) against the cell
centres the head's queries assume.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ifa.data.datasets import build_dataset
from ifa.hub import load_model
from ifa.inference import Predictor
from ifa.metrics import band_scores, confusion_matrix, summarize, trimap_confusion_matrices

BANDS = (1, 2, 4, 8)
STRIDE = 4
CHECK_IMAGES = 8  # the cards' checks (here, tools.ship_camvid_pair): first val images, re-measured by tests/shipped


def place_samples(samples: torch.Tensor, phase: int, size: tuple[int, int], stride: int = STRIDE) -> torch.Tensor:
    """(K, h, w) samples taken at the centres of pixels stride * i + phase -> (K, *size): linearly interpolated to
    every pixel centre (beyond the outermost samples, the nearest one)."""

    def axis(length: int, samples_along: int) -> torch.Tensor:
        position = (torch.arange(length, dtype=torch.float64) - phase) / stride  # in sample steps
        return (2 * position / max(samples_along - 1, 1) - 1).float()

    rows, cols = axis(size[0], samples.shape[1]), axis(size[1], samples.shape[2])
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)[None]  # (1, H, W, 2) as (x, y)
    return F.grid_sample(samples[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


def phase_resample(values: torch.Tensor, phase: int, stride: int = STRIDE) -> torch.Tensor:
    """(K, H, W) -> (K, H, W): the samples at rows and columns stride * i + phase, linearly interpolated back to
    every pixel centre (`place_samples`)."""
    return place_samples(values[:, phase::stride, phase::stride], phase, tuple(values.shape[1:]), stride)


def _grid_logits(model, predictor: Predictor, image) -> torch.Tensor:
    """A Semantic FPN's stride-4 logits (K, h, w) for one image at scale 1 (padded at the bottom and right as the
    model pads its input, so that cell i still starts at pixel 4i)."""
    x = predictor.preprocess(image)
    h, w = model.padded_size(tuple(x.shape[-2:]))
    with torch.no_grad():
        return model.head_logits(model.levels(F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))))[0].float()


def feature_centres(model, size: tuple[int, int] = (256, 320), trials: int = 3, seed: int = 0) -> list[dict]:
    """Where each head input level's features sit: for a cell (i, j) near the middle of a (1, 3, *size) random
    input, the centre of mass of |d feature(i, j) / d input| (summed over channels), minus the centre the queries
    assume (align_corners=False: S * i + S / 2 in continuous pixel coordinates for stride S), averaged over
    `trials` neighbouring cells. [{"stride", "dy", "dx" (px), "dy_cells", "dx_cells"}] per level, fine to coarse."""
    generator = torch.Generator().manual_seed(seed)
    h, w = size
    rows, cols = torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5
    was_training = model.training
    model.eval()
    shifts: dict[int, list[tuple[float, float]]] = {}
    try:
        with torch.no_grad():
            levels = len(model.levels(torch.zeros(1, 3, h, w)))
        for trial in range(trials):
            for level in range(levels):
                x = torch.randn(1, 3, h, w, generator=generator, requires_grad=True)
                feature = model.levels(x)[level]
                stride = h // feature.shape[-2]
                i, j = feature.shape[-2] // 2 + trial - trials // 2, feature.shape[-1] // 2 + trial - trials // 2
                feature[0, :, i, j].pow(2).sum().backward()
                weight = x.grad.abs().sum((0, 1)).double()
                weight = weight / weight.sum()
                cy, cx = float((weight.sum(1) * rows).sum()), float((weight.sum(0) * cols).sum())
                shifts.setdefault(stride, []).append((cy - (stride * i + stride / 2), cx - (stride * j + stride / 2)))
    finally:
        model.train(was_training)
    out = []
    for stride, pairs in shifts.items():
        dy, dx = (float(np.mean(v)) for v in zip(*pairs))
        out.append({"stride": stride, "dy": dy, "dx": dx, "dy_cells": dy / stride, "dx_cells": dx / stride})
    return out


def study(model, dataset, resolutions=("stride4", "full"), zeroed: bool = False, limit: int | None = None,
          phases: bool = False) -> dict:
    """{resolution: {"mIoU", "aAcc", "classes": {name: IoU or None}, "bands": {width: {"accuracy", "mIoU",
    "pixels"}}}} in percent, plus "offsets_zeroed": {"mIoU", "changed_pixels_percent"} (IFA only) and "phases":
    {phase: mIoU} (IFA: the full resolution kept at one pixel per stride-4 cell; Semantic FPN: its stride-4 logits
    placed at those pixels) when asked."""
    k, names = model.config.num_classes, list(dataset.info.class_names)
    resolutions = [r for r in resolutions if model.is_ifa or r == "stride4"]
    predictors = {r: Predictor(model, device="cpu", precision="fp32", ifa_resolution=r) for r in resolutions}
    whole = {r: np.zeros((k, k), np.int64) for r in resolutions}
    bands = {r: {w: np.zeros((k, k), np.int64) for w in BANDS} for r in resolutions}
    zero_cm, changed, scored = np.zeros((k, k), np.int64), 0, 0
    phases = phases and ("full" in predictors or not model.is_ifa)  # an IFA model's phases come from every pixel
    phase_cms = {s: np.zeros((k, k), np.int64) for s in range(STRIDE)} if phases else {}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for index in tqdm(range(n), desc="resolution study"):
        image, label = dataset[index]
        for r, predictor in predictors.items():
            prediction = predictor.predict(image)
            pred = prediction.labels
            whole[r] += confusion_matrix(pred, label, k, 255)
            if r == "full":
                log_probs = prediction.probs.clamp_min(1e-12).log()
                for s, cm in phase_cms.items():
                    cm += confusion_matrix(phase_resample(log_probs, s).argmax(0).numpy(), label, k, 255)
            elif phase_cms and not model.is_ifa:
                logits = _grid_logits(model, predictor, image)
                for s, cm in phase_cms.items():
                    cm += confusion_matrix(place_samples(logits, s, label.shape).argmax(0).numpy(), label, k, 255)
            for w, cm in trimap_confusion_matrices(pred, label, BANDS, k, 255).items():
                bands[r][w] += cm
            if r == "stride4" and zeroed and model.is_ifa:
                with model.offsets_zeroed():
                    off = predictor.predict(image).labels
                zero_cm += confusion_matrix(off, label, k, 255)
                valid = label != 255
                changed += int((off != pred)[valid].sum())
                scored += int(valid.sum())
    result = {}
    for r in resolutions:
        summary = summarize(whole[r], names)
        result[r] = {"mIoU": summary["mIoU"], "aAcc": summary["aAcc"], "classes": summary["per_class"],
                     "bands": {w: band_scores(cm) for w, cm in bands[r].items()}}
    if zeroed and model.is_ifa:
        result["offsets_zeroed"] = {"mIoU": summarize(zero_cm, names)["mIoU"],
                                    "changed_pixels_percent": 100.0 * changed / max(scored, 1)}
    if phases:
        result["phases"] = {s: summarize(cm, names)["mIoU"] for s, cm in phase_cms.items()}
    result["images"] = n
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="checkpoint folder or Hub repo id")
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--root", default="../shared/data/camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--resolutions", nargs="+", default=["stride4", "full"], choices=["stride4", "full"])
    parser.add_argument("--zeroed", action="store_true", help="also the stride-4 mIoU with the offsets zeroed")
    parser.add_argument("--phases", action="store_true",
                        help="also the every-pixel result kept at one pixel per stride-4 cell, per phase (Semantic "
                             "FPN: its stride-4 logits placed at those pixels)")
    parser.add_argument("--centres", action="store_true",
                        help="also where each level's features are centred against the cells the queries assume")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--record", action="store_true",
                        help="write both mIoUs into the checkpoint's card (ifa.resolution; the app defaults to the "
                             f"better resolution), with the every-pixel mIoU of the first {CHECK_IMAGES} images "
                             "(tests/shipped re-measures it)")
    parser.add_argument("--from-json", help="a result this tool wrote (--json) for the same model and split: "
                                            "printed (and recorded) instead of measured again")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    dataset = build_dataset(args.dataset, args.root, args.split)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
    else:
        centres = feature_centres(model) if args.centres else None
        for c in centres or ():
            print(f"stride {c['stride']:2d} features centred {c['dy']:+.2f} px down, {c['dx']:+.2f} px right of "
                  f"the assumed cell centre ({c['dy_cells']:+.2f}, {c['dx_cells']:+.2f} cells)")
        result = study(model, dataset, args.resolutions, args.zeroed, args.limit, args.phases)
        if centres:
            result["feature_centres"] = centres
    for r in args.resolutions:
        if r not in result:
            continue
        row = result[r]
        band_text = "  ".join(f"{w}px {b['accuracy']:.2f}/{b['mIoU']:.2f}" for w, b in row["bands"].items())
        print(f"{r:8s} mIoU {row['mIoU']:.2f} aAcc {row['aAcc']:.2f} | bands acc/mIoU: {band_text}")
    if "offsets_zeroed" in result:
        z = result["offsets_zeroed"]
        print(f"offsets zeroed (stride4): mIoU {z['mIoU']:.2f}, {z['changed_pixels_percent']:.2f}% of labels change")
    if "phases" in result:
        kept = "full kept at" if "full" in result else "stride-4 logits placed at"
        print(f"{kept} one pixel per stride-4 cell, mIoU by phase: "
              + "  ".join(f"{s}: {v:.2f}" for s, v in result["phases"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.record and "full" in result:
        check = study(model, dataset, ["full"], limit=CHECK_IMAGES)["full"]["mIoU"]
        record_in_card(args.model, result, check)
    return 0


def record_in_card(folder: str, result: dict, check: float | None = None) -> None:
    """The card's `ifa.resolution` block: both val mIoUs and the images they are over, and `check`, the every-pixel
    mIoU of the first CHECK_IMAGES images when given (the rest of the card unchanged)."""
    from pathlib import Path

    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    card = ModelCard.load(path)
    records = dict(getattr(card.data, "ifa", None) or {})
    records["resolution"] = {"stride4": round(result["stride4"]["mIoU"], 3), "full": round(result["full"]["mIoU"], 3),
                             "images": result["images"]}
    if check is not None:
        records["resolution"]["check"] = {"images": CHECK_IMAGES, "full": round(check, 3)}
    card.data.ifa = records
    card.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
