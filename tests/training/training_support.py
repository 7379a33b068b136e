"""Helpers of the training / evaluation tests (imported by name: tests/training is on sys.path under pytest)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CAMVID = Path(os.environ.get("IFA_CAMVID_ROOT") or REPO.parent / "shared" / "data" / "camvid")
TINY_SIZE = (64, 80)  # (H, W) of the subset's images: the crop size too, so every batch is fixed

# A recipe that trains in well under a second per iteration on one CPU thread: tiny widths, no
# pretrained weights, crops equal to the images (no scale, no flip), so the training batch is fixed.
TINY_RECIPE = {
    "name": "tiny",
    "model": {"architecture": "ifa", "backbone": "efficientnet_lite0", "neck_channels": 8, "head_channels": 8,
              "mlp_channels": [16, 8], "pos_encoding": "learned", "pos_dim": 8, "aux_channels": 8},
    "pretrained_backbone": False,
    "data": {"dataset": "camvid", "crop_size": list(TINY_SIZE), "scale_range": [1.0, 1.0], "flip": False,
             "workers": 0},
    "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0, "head_lr_mult": 1.0},
    "schedule": {"iters": 4, "warmup_iters": 0, "power": 0.9},
    "loss": {"ohem": True, "ohem_thresh": 0.7, "ohem_min_kept": 2000, "aux_weight": 0.4},
    "train": {"batch_size": 4, "seed": 0, "amp": False, "log_interval": 1, "ckpt_interval": 2,
              "eval_interval": 0, "eval_limit": 1},
}


def deep_update(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_recipe(path: Path, root: Path, out_dir: Path, **updates) -> Path:
    """TINY_RECIPE with data.root, train.out_dir and per-section updates, as a YAML file for ifa.train."""
    recipe = deep_update(TINY_RECIPE, {"data": {"root": str(root)}, "train": {"out_dir": str(out_dir)}})
    recipe = deep_update(recipe, updates)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
