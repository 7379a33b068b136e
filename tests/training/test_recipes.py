"""Every configs/*.yaml loads with ifa.train.load_config and describes a buildable ModelConfig; the paper's
experiments are all there with the paper's recipe."""

from __future__ import annotations

import re

import pytest
from training_support import REPO

from ifa.data.classes import get_dataset_info
from ifa.models.config import ConfigError
from ifa.models.ifa import POSITION_ENCODINGS
from ifa.train import DEFAULTS, load_config, model_config

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BACKBONES = {"r50": "resnet50", "r101": "resnet101", "hrnet18": "hrnet_w18", "resnest50": "resnest50"}
TABLE1 = {"r50": (77.19, 78.02), "r101": (78.70, 79.49), "hrnet18": (77.60, 78.10), "resnest50": (78.20, 78.85)}


def load(name: str) -> dict:
    return load_config(REPO / "configs" / f"{name}.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_builds_its_model_config(path):
    cfg = load_config(path)
    assert cfg["name"] == path.stem
    assert cfg["train"]["out_dir"] == f"runs/{path.stem}"
    info = get_dataset_info(cfg["data"]["dataset"])
    mcfg = model_config(cfg, info)  # validates architecture, backbone, widths, encoding (no weights needed)
    assert mcfg.num_classes == info.num_classes
    assert cfg["schedule"]["iters"] > 0 and cfg["train"]["batch_size"] > 0
    header = path.read_text().splitlines()
    assert header[0].startswith("# "), "each config starts with a comment saying what to compare with"


PAPER_CONFIGS = [p for p in CONFIGS if not p.stem.startswith("camvid")]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.stem for p in PAPER_CONFIGS])
def test_paper_config_header_names_what_to_compare_with(path):
    comments = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert "Compare with" in comments
    assert "Train: torchrun" in comments
    if path.stem.startswith("cityscapes") and "fixed" not in path.stem:
        assert re.search(r"\b7\d\.\d\d\b", comments), "Cityscapes configs quote the paper's mIoU"


def test_table1_pairs_share_the_reference_recipe():
    for key, backbone in BACKBONES.items():
        fpn, ifa = load(f"cityscapes-{key}-fpn"), load(f"cityscapes-{key}-ifa")
        assert f"{TABLE1[key][0]:.2f}" in (REPO / "configs" / f"cityscapes-{key}-fpn.yaml").read_text()
        assert f"{TABLE1[key][1]:.2f}" in (REPO / "configs" / f"cityscapes-{key}-ifa.yaml").read_text()
        assert fpn["model"] == {"architecture": "fpn", "backbone": backbone, "neck_channels": 256,
                                "head_channels": 128, "aux_channels": 256}
        assert ifa["model"] == {"architecture": "ifa", "backbone": backbone, "neck_channels": 256,
                                "mlp_channels": [512, 256, 256], "pos_encoding": "learned", "pos_dim": 24,
                                "aux_channels": 256}
        for cfg in (fpn, ifa):
            assert cfg["pretrained_backbone"] is True
            assert cfg["data"] == {**DEFAULTS["data"], "dataset": "cityscapes", "root": "data/cityscapes",
                                    "crop_size": [769, 769], "scale_range": [0.5, 2.0], "flip": True,
                                    "photometric": False, "workers": 4}
            assert cfg["optim"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005,
                                    "head_lr_mult": 1.0, "ifa_head_lr_mult": None, "decay_norm_bias": True}
            assert cfg["schedule"] == {"iters": 80000, "warmup_iters": 0, "power": 0.9, "min_lr": 0.0}
            assert cfg["loss"] == {"ohem": True, "ohem_thresh": 0.7, "ohem_min_kept": 100000, "aux_weight": 0.4,
                                   "grid_weight": 1.0, "point_samples": 0, "point_weight": 1.0}
            assert cfg["train"]["batch_size"] == 8 and cfg["train"]["sync_bn"] and cfg["train"]["amp"]
            assert cfg["eval"] == {"scales": [1.0], "flip": False, "mode": "slide", "window": [769, 769],
                                   "stride": None}
        for section in ("data", "optim", "schedule", "loss", "eval"):
            assert fpn[section] == ifa[section]


def test_table2_and_figure1_vary_one_thing():
    base = load("cityscapes-r50-ifa")
    studies = {f"cityscapes-r50-ifa-pe-{pe}": {"pos_encoding": pe} for pe in POSITION_ENCODINGS if pe != "learned"}
    studies.update({f"cityscapes-r50-ifa-d{d}": {"pos_dim": d} for d in (12, 36, 48, 60, 72)})
    for name, change in studies.items():
        cfg = load(name)
        assert cfg["model"] == {**base["model"], **change}, name
        assert {k: v for k, v in cfg.items() if k not in ("name", "model", "train")} == \
               {k: v for k, v in base.items() if k not in ("name", "model", "train")}
    # Figure 1's six widths: 24 is the Table 1 config itself.
    widths = {load(n)["model"]["pos_dim"] for n in studies if "-d" in n} | {base["model"]["pos_dim"]}
    assert widths == {12, 24, 36, 48, 60, 72}


@pytest.mark.parametrize("dataset,iters", [("ade20k", 160000), ("pascal-context", 80000)])
def test_ade20k_and_pascal_context_pairs(dataset, iters):
    for key in ("r50", "r101"):
        fpn, ifa = load(f"{dataset}-{key}-fpn"), load(f"{dataset}-{key}-ifa")
        assert (fpn["model"]["architecture"], ifa["model"]["architecture"]) == ("fpn", "ifa")
        assert fpn["model"]["backbone"] == ifa["model"]["backbone"] == BACKBONES[key]
        for cfg in (fpn, ifa):
            assert cfg["data"]["crop_size"] == [512, 512]
            assert cfg["schedule"]["iters"] == iters
        for section in ("data", "optim", "schedule", "loss", "eval"):
            assert fpn[section] == ifa[section]


def test_overrides_and_errors(tmp_path):
    cfg = load_config(REPO / "configs" / "cityscapes-r50-ifa.yaml", ["schedule.iters=10", "optim.lr=0.5",
                                                                       "model.pos_dim=12", "data.crop_size=[65, 97]"])
    assert (cfg["schedule"]["iters"], cfg["optim"]["lr"], cfg["model"]["pos_dim"]) == (10, 0.5, 12)
    assert cfg["data"]["crop_size"] == [65, 97]
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(None, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(None, ["iters"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: 3\n")
    with pytest.raises(ConfigError, match="'data' must be a mapping"):
        load_config(bad)


def test_camvid_pair_differs_only_in_the_head():
    """The shipped pair: same backbone, neck, data, optimiser, schedule, loss and seed; only the head (and the IFA
    head's own learning rate) differs."""
    fpn, ifa = load("camvid-effl0-fpn"), load("camvid-effl0-ifa")
    for key in ("pretrained_backbone", "data", "schedule", "loss", "eval"):
        assert fpn[key] == ifa[key], key
    assert (fpn["optim"]["ifa_head_lr_mult"], ifa["optim"]["ifa_head_lr_mult"]) == (None, 1.0)
    assert {**fpn["optim"], "ifa_head_lr_mult": 1.0} == ifa["optim"]
    assert {k: v for k, v in fpn["train"].items() if k != "out_dir"} == \
           {k: v for k, v in ifa["train"].items() if k != "out_dir"}
    shared = ("backbone", "neck_channels", "aux_channels")
    assert {k: fpn["model"][k] for k in shared} == {k: ifa["model"][k] for k in shared}
    assert (fpn["model"]["architecture"], ifa["model"]["architecture"]) == ("fpn", "ifa")
    assert ifa["model"]["ifa_features"] == "fpn"  # the IFA head reads the same FPN neck
